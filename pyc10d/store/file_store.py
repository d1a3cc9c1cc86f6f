"""``FileStore``: a store shared by the processes of one host through one file (torch's FileStore).

The file is an append-only log of records. Each record is a fixed header (operation, key length,
value length) followed by the UTF-8 key and the value bytes. Every operation takes
``fcntl.flock`` on the file (exclusive to change it, shared to read it), replays the records other
handles appended since this handle last looked into a local :class:`KeyValueTable`, works on that
table and, if it changed something, appends one record per change before unlocking. ``flock``
belongs to an open file description, so two handles in one process exclude each other as well;
a ``threading.Lock`` serialises the threads sharing one handle.

A record cut short by a writer that died mid-write is never replayed: readers stop before it and
the next writer, which holds the exclusive lock and so knows nobody is writing, truncates it.

Reference counting follows torch: each FileStore joining the file adds one to a hidden counter;
``close()`` (also run by garbage collection and at interpreter exit) counts the handle as
finished, and the handle that leaves the counter at zero removes the file, provided at least
``world_size`` handles have finished (never if ``world_size`` is negative). ``world_size`` caps
nothing: more FileStores than that may share the file, and the last of them removes it. A
FileStore created on the path afterwards starts on a new, empty file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from ..core.errors import DistStoreError, QueueEmptyError
from ..core.timeouts import Deadline, TimeoutLike
from .base import Store, ValueLike, check_key, check_keys, timeout_error, to_bytes
from .table import INTERNAL_PREFIX, KeyValueTable

T = TypeVar("T")

# The first bytes of every FileStore file; a file starting otherwise is not ours.
_MAGIC = b"pyc10d-FileStore-v1\n"
# One record: operation (u8), key length (u32), value length (u32), then key and value bytes.
_HEADER = struct.Struct("<BII")
_SET, _DELETE, _APPEND, _PUSH, _POP = 1, 2, 3, 4, 5

# Hidden bookkeeping keys: handles currently joined, and handles that have closed.
_REFCOUNT_KEY = INTERNAL_PREFIX + "filestore/refcount"
_FINISHED_KEY = INTERNAL_PREFIX + "filestore/finished"

# Polling for get/wait: a few immediate re-checks, then sleeps doubling up to _MAX_DELAY.
_SPINS = 3
_MIN_DELAY = 0.0002
_MAX_DELAY = 0.01

# How often to retry opening a path whose file another group's last user removed meanwhile.
_OPEN_ATTEMPTS = 100

Record = tuple[int, str, bytes]


def _encode(op: int, key: str, value: bytes = b"") -> bytes:
    """Serialise one log record."""
    raw_key = key.encode("utf-8", "surrogatepass")
    return _HEADER.pack(op, len(raw_key), len(value)) + raw_key + value


def _apply(table: KeyValueTable, op: int, key: str, value: bytes) -> None:
    """Replay one record into ``table``."""
    if op == _SET:
        table.set(key, value)
    elif op == _DELETE:
        table.delete(key)
    elif op == _APPEND:
        table.append(key, value)
    elif op == _PUSH:
        table.queue_push(key, value)
    elif op == _POP:
        table.queue_pop(key)
    else:
        raise DistStoreError(f"FileStore: corrupt log record (unknown operation {op})")


def _same_file(fd: int, path: str) -> bool:
    """True if ``fd`` is still the file ``path`` names (not removed or replaced since opening)."""
    st = os.fstat(fd)
    if st.st_nlink == 0:
        return False
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (st.st_dev, st.st_ino)


def _open_path(path: str) -> int:
    """Open (creating if needed) the store file; DistStoreError if that is impossible."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise DistStoreError(f"FileStore: cannot open {path!r}: {err.strerror}") from err


class _Log:
    """One handle's open log file and the table replayed from it (kept apart from the FileStore
    so that its finalizer can close it without keeping the store alive)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.mutex = threading.Lock()
        self.table = KeyValueTable()
        self.offset = 0
        # Set in a forked child: the inherited descriptor shares the parent's flock, so the
        # child reopens the file before its first operation and never counts as a user.
        self.forked = False

    # -- opening ------------------------------------------------------------------------------
    def open_new(self, join: Callable[[], None]) -> None:
        """Open the path, retrying if the previous group's last user removes the file under us,
        and run ``join`` (under the exclusive lock) to register this handle."""
        for _ in range(_OPEN_ATTEMPTS):
            fd = _open_path(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not _same_file(fd, self.path):
                    os.close(fd)  # removed by its last user meanwhile: open the new one
                    continue
                self.fd = fd
                self.replay(exclusive=True)
                join()
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except BaseException:
                os.close(fd)  # also drops the flock
                self.fd = -1
                raise
        raise DistStoreError(f"FileStore: {self.path!r} kept disappearing while being opened")

    def open_like(self, other: _Log) -> None:
        """Open a new descriptor (its own flock) on the very file ``other`` has open."""
        proc = f"/proc/self/fd/{other.fd}"
        try:
            self.fd = os.open(proc, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            self.fd = _open_path(other.path)

    def reopen_after_fork(self) -> None:
        """In a forked child: swap the inherited descriptor for one of the child's own."""
        inherited = self.fd
        self.open_like(self)
        os.close(inherited)
        self.forked = False

    # -- reading and writing ------------------------------------------------------------------
    def replay(self, exclusive: bool) -> None:
        """Apply the complete records appended since ``offset`` (the caller holds the flock)."""
        size = os.fstat(self.fd).st_size
        if self.offset == 0:
            if size < len(_MAGIC):
                if exclusive:  # new file, or a creator died while writing the header
                    os.ftruncate(self.fd, 0)
                    self._write_at(0, _MAGIC)
                    self.offset = len(_MAGIC)
                return
            if os.pread(self.fd, len(_MAGIC), 0) != _MAGIC:
                raise DistStoreError(f"FileStore: {self.path!r} is not a pyc10d FileStore file")
            self.offset = len(_MAGIC)
        if size < self.offset:
            raise DistStoreError(f"FileStore: {self.path!r} shrank; was it modified externally?")
        if size == self.offset:
            return
        data = self._read_at(self.offset, size - self.offset)
        used = self._apply_all(data)
        self.offset += used
        if used < len(data) and exclusive:
            # A torn record from a writer that died mid-write; with the exclusive lock held
            # nobody else is writing, so drop it before appending after it.
            os.ftruncate(self.fd, self.offset)

    def _apply_all(self, data: bytes) -> int:
        """Apply every complete record in ``data``; return the bytes consumed."""
        pos, end, head = 0, len(data), _HEADER.size
        while end - pos >= head:
            op, key_len, value_len = _HEADER.unpack_from(data, pos)
            stop = pos + head + key_len + value_len
            if stop > end:
                break
            key = data[pos + head : pos + head + key_len].decode("utf-8", "surrogatepass")
            _apply(self.table, op, key, data[pos + head + key_len : stop])
            pos = stop
        return pos

    def _read_at(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes at ``offset`` (fewer only if the file ends first)."""
        chunks = []
        while length > 0:
            chunk = os.pread(self.fd, length, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)

    def _write_at(self, offset: int, data: bytes) -> None:
        """Write all of ``data`` at ``offset``."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, offset)
            offset += written
            view = view[written:]

    def write(self, records: Sequence[Record]) -> None:
        """Append ``records``, already applied to the table, to the log (exclusive lock held).

        If the write fails the partial tail is cut off and the cache is dropped, so the next
        operation rebuilds it from what the file really holds.
        """
        if not records:
            return
        data = b"".join(_encode(*r) for r in records)
        try:
            self._write_at(self.offset, data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.offset)
            self.table, self.offset = KeyValueTable(), 0
            raise
        self.offset += len(data)

    def unchanged(self) -> bool:
        """True if nothing was appended since the last replay (a lock-free early check)."""
        with self.mutex:
            return self.fd >= 0 and not self.forked and os.fstat(self.fd).st_size == self.offset

    @contextlib.contextmanager
    def locked(self, exclusive: bool) -> Iterator[KeyValueTable]:
        """Hold the thread mutex and the file lock, with the table brought up to date."""
        with self.mutex:
            if self.fd < 0:
                raise DistStoreError(f"FileStore on {self.path!r} is closed")
            if self.forked:
                self.reopen_after_fork()
            fcntl.flock(self.fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                self.replay(exclusive)
                yield self.table
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)


# Every open log, so that a fork can mark them all as inherited.
_LOGS: weakref.WeakSet[_Log] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """Mark every log as inherited and renew its mutex (another thread may have held it)."""
    for log in list(_LOGS):
        log.mutex = threading.Lock()
        log.forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _release(log: _Log, world_size: int, counted: bool) -> None:
    """Close ``log``; for a counted handle, record it as finished and remove the file if no user
    is left and at least ``world_size`` (>= 0) have finished (the finalizer of every FileStore;
    torch's ``~FileStore``)."""
    with log.mutex:
        if log.fd < 0:
            return
        try:
            if counted and not log.forked and os.fstat(log.fd).st_nlink > 0:
                fcntl.flock(log.fd, fcntl.LOCK_EX)
                log.replay(exclusive=True)
                finished = log.table.add(_FINISHED_KEY, 1)
                live = log.table.add(_REFCOUNT_KEY, -1)
                if 0 <= world_size <= finished and live <= 0 and _same_file(log.fd, log.path):
                    os.unlink(log.path)
                else:
                    log.write(
                        [
                            (_SET, _FINISHED_KEY, str(finished).encode()),
                            (_SET, _REFCOUNT_KEY, str(live).encode()),
                        ]
                    )
        finally:
            os.close(log.fd)  # also releases the flock
            log.fd = -1


class FileStore(Store):
    """A store kept in a file, shared by the processes of one host (torch's FileStore).

    ``world_size`` is the number of FileStore objects expected to use the file. As in torch it
    is no limit: once that many have closed, the last open one to close removes the file.
    A negative value (the default ``-1``: unknown) means the file is never removed.
    """

    def __init__(self, path: str | os.PathLike[str], world_size: int = -1) -> None:
        super().__init__()
        path = os.fspath(path)
        if not isinstance(path, str):
            raise TypeError(f"FileStore path must be a str, got {type(path).__name__}")
        if isinstance(world_size, bool) or not isinstance(world_size, int):
            raise TypeError(f"world_size must be an int, got {type(world_size).__name__}")
        self.path = path
        self._world_size = world_size
        self._log = _Log(path)
        self._log.open_new(self._join)
        _LOGS.add(self._log)
        self._finalizer = weakref.finalize(self, _release, self._log, world_size, True)

    def _join(self) -> None:
        """Count this handle as a user of the file (exclusive lock held, table replayed).

        As in torch, ``world_size`` does not cap the users: any number may join.
        """
        table = self._log.table
        live = table.add(_REFCOUNT_KEY, 1)
        self._log.write([(_SET, _REFCOUNT_KEY, str(live).encode())])

    @classmethod
    def _uncounted(cls, original: FileStore) -> FileStore:
        """A new handle on ``original``'s file that takes no part in reference counting."""
        store = cls.__new__(cls)
        Store.__init__(store, original.timeout)
        store.path = original.path
        store._world_size = original._world_size
        store._log = _Log(original.path)
        with original._log.mutex:
            if original._log.fd < 0:
                raise DistStoreError(f"FileStore on {original.path!r} is closed")
            store._log.open_like(original._log)
        _LOGS.add(store._log)
        store._finalizer = weakref.finalize(store, _release, store._log, -1, False)
        return store

    # -- lifetime -----------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        """The number of users this FileStore expects (-1: unknown)."""
        return self._world_size

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Stop using the file; the last user to close removes it once ``world_size`` have
        closed (torch's destructor). Idempotent."""
        self._finalizer()

    def __enter__(self) -> FileStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"FileStore({self.path!r}, world_size={self._world_size}) [{state}]"

    def clone(self) -> FileStore:
        """A new handle on the same file with its own lock, for use from another thread; it
        does not count towards ``world_size`` and closing it never removes the file."""
        return FileStore._uncounted(self)

    # -- helpers ------------------------------------------------------------------------------
    def _poll(
        self,
        attempt: Callable[[KeyValueTable], T | None],
        keys: list[str],
        seconds: float,
        exclusive: bool = False,
    ) -> T:
        """Call ``attempt`` on a fresh table until it returns non-None, backing off between
        tries; raise the timeout error naming ``keys`` after ``seconds``."""
        deadline = Deadline(seconds)
        tries, delay = 0, 0.0
        while True:
            if tries == 0 or not self._log.unchanged():
                with self._log.locked(exclusive) as table:
                    result = attempt(table)
                    missing = table.missing(keys)
                if result is not None:
                    return result
            left = deadline.remaining()
            if left <= 0:
                raise timeout_error("FileStore", keys, missing or keys, seconds)
            tries += 1
            if tries <= _SPINS:
                time.sleep(0)
            else:
                delay = min(_MAX_DELAY, max(_MIN_DELAY, delay * 2))
                time.sleep(min(delay, left))

    # -- Store API ----------------------------------------------------------------------------
    def set(self, key: str, value: ValueLike) -> None:
        """Set ``key`` to ``value``."""
        key, value = check_key(key), to_bytes(value)
        with self._log.locked(exclusive=True) as table:
            table.set(key, value)
            self._log.write([(_SET, key, value)])

    def get(self, key: str) -> bytes:
        """Return ``key``'s value, waiting up to the store timeout for it to be set."""
        check_key(key)
        return self._poll(lambda table: table.get(key), [key], self._wait_seconds(None))

    def add(self, key: str, amount: int) -> int:
        """Atomically add ``amount`` to the counter at ``key`` (0 if unset); return the sum."""
        check_key(key)
        amount = int(amount)
        with self._log.locked(exclusive=True) as table:
            total = table.add(key, amount)
            self._log.write([(_SET, key, str(total).encode())])
            return total

    def compare_set(self, key: str, expected_value: ValueLike, desired_value: ValueLike) -> bytes:
        """torch's compare-and-set; see :meth:`Store.compare_set`."""
        check_key(key)
        expected, desired = to_bytes(expected_value), to_bytes(desired_value)
        with self._log.locked(exclusive=True) as table:
            before = table.get(key)
            result = table.compare_set(key, expected, desired)
            after = table.get(key)
            if after is not None and (before is None or after != before):
                self._log.write([(_SET, key, after)])
            return result

    def append(self, key: str, value: ValueLike) -> None:
        """Append ``value`` to the bytes at ``key`` (setting it if unset), atomically."""
        key, value = check_key(key), to_bytes(value)
        with self._log.locked(exclusive=True) as table:
            table.append(key, value)
            self._log.write([(_APPEND, key, value)])

    def wait(self, keys: Sequence[str], timeout: TimeoutLike | None = None) -> None:
        """Block until every key in ``keys`` exists, or raise DistStoreError after ``timeout``
        (the store timeout if None)."""
        keys = check_keys(keys)
        seconds = self._wait_seconds(timeout)
        self._poll(lambda table: True if not table.missing(keys) else None, keys, seconds)

    def check(self, keys: Sequence[str]) -> bool:
        """True if every key in ``keys`` exists, without waiting."""
        keys = check_keys(keys)
        with self._log.locked(exclusive=False) as table:
            return not table.missing(keys)

    def delete_key(self, key: str) -> bool:
        """Delete ``key``; True if it existed."""
        check_key(key)
        with self._log.locked(exclusive=True) as table:
            existed = table.delete(key)
            if existed:
                self._log.write([(_DELETE, key, b"")])
            return existed

    def num_keys(self) -> int:
        """The number of keys set (bookkeeping keys excluded)."""
        with self._log.locked(exclusive=False) as table:
            return table.num_user_keys

    def list_keys(self) -> list[str]:
        """Every key set (bookkeeping keys excluded)."""
        with self._log.locked(exclusive=False) as table:
            return table.list_keys()

    def multi_get(self, keys: Sequence[str]) -> list[bytes]:
        """Values of ``keys`` in order, waiting up to the store timeout for all of them."""
        keys = check_keys(keys)

        def attempt(table: KeyValueTable) -> list[bytes] | None:
            return None if table.missing(keys) else [table.data[k] for k in keys]

        return self._poll(attempt, keys, self._wait_seconds(None))

    def multi_set(self, keys: Sequence[str], values: Sequence[ValueLike]) -> None:
        """Set each of ``keys`` to the matching value, all in one atomic step."""
        keys = check_keys(keys)
        if len(keys) != len(values):
            raise ValueError(f"multi_set got {len(keys)} keys but {len(values)} values")
        raw = [to_bytes(v) for v in values]
        with self._log.locked(exclusive=True) as table:
            for key, value in zip(keys, raw, strict=True):
                table.set(key, value)
            self._log.write([(_SET, k, v) for k, v in zip(keys, raw, strict=True)])

    def queue_push(self, key: str, value: ValueLike) -> None:
        """Push ``value`` onto the back of queue ``key``."""
        key, value = check_key(key), to_bytes(value)
        with self._log.locked(exclusive=True) as table:
            table.queue_push(key, value)
            self._log.write([(_PUSH, key, value)])

    def queue_pop(self, key: str, block: bool = True) -> bytes:
        """Pop the front of queue ``key``, waiting up to the store timeout if ``block``;
        QueueEmptyError if it is empty and not ``block``."""
        check_key(key)

        def attempt(table: KeyValueTable) -> bytes | None:
            value = table.queue_pop(key)
            if value is not None:
                self._log.write([(_POP, key, b"")])
            return value

        if block:
            return self._poll(attempt, [key], self._wait_seconds(None), exclusive=True)
        with self._log.locked(exclusive=True) as table:
            value = attempt(table)
        if value is None:
            raise QueueEmptyError(f"queue {key!r} is empty")
        return value

    def queue_len(self, key: str) -> int:
        """The number of items in queue ``key``."""
        check_key(key)
        with self._log.locked(exclusive=False) as table:
            return table.queue_len(key)


__all__ = ["FileStore"]
