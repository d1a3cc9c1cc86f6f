"""The abstract ``Store`` every key-value store implements, with torch.distributed's names."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import timedelta

from ..core.errors import DistStoreError
from ..core.timeouts import TimeoutLike, format_ms, to_timedelta

DEFAULT_STORE_TIMEOUT = timedelta(seconds=300)

ValueLike = bytes | bytearray | memoryview | str


def check_key(key: object, what: str = "key") -> str:
    """Return ``key`` if it is a ``str``; raise TypeError naming the bad key otherwise."""
    if not isinstance(key, str):
        raise TypeError(f"store {what} must be a str, got {type(key).__name__}: {key!r}")
    return key


def check_keys(keys: object) -> list[str]:
    """Validate a sequence of string keys (a bare string is rejected, as torch does)."""
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
        raise TypeError(f"store keys must be a list of str, got {type(keys).__name__}: {keys!r}")
    return [check_key(k) for k in keys]


def to_bytes(value: object, what: str = "value") -> bytes:
    """Encode a store value: bytes-like as is, ``str`` as UTF-8; anything else is a TypeError."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"store {what} must be bytes or str, got {type(value).__name__}")


def timeout_error(
    store: str, keys: Sequence[str], missing: Sequence[str], seconds: float
) -> DistStoreError:
    """The error a timed-out ``get``/``wait`` raises: names the store, missing keys, the wait."""
    return DistStoreError(
        f"{store}: timed out after {format_ms(seconds)} waiting for key(s) {list(missing)!r}"
        f" (wait timeout after {format_ms(seconds)}, keys: {', '.join(keys)})"
    )


class Store(abc.ABC):
    """A key-value store shared by the ranks of a job (torch.distributed.Store).

    Values are bytes (a ``str`` is encoded as UTF-8). ``get`` and ``wait`` block until the keys
    exist or the store's timeout passes, raising :class:`DistStoreError` on timeout.
    """

    def __init__(self, timeout: TimeoutLike = DEFAULT_STORE_TIMEOUT) -> None:
        self._timeout = to_timedelta(timeout)

    # -- timeout ------------------------------------------------------------------------------
    @property
    def timeout(self) -> timedelta:
        """The default timeout of blocking operations (``get``, ``wait``, ``multi_get``)."""
        return self._timeout

    def set_timeout(self, timeout: TimeoutLike) -> None:
        """Change the default timeout; a negative timeout raises ValueError."""
        self._timeout = to_timedelta(timeout)

    def _wait_seconds(self, timeout: TimeoutLike | None) -> float:
        """Seconds to wait: ``timeout`` if given, else the store's own timeout."""
        return to_timedelta(self._timeout if timeout is None else timeout).total_seconds()

    # -- the core every store implements ------------------------------------------------------
    @abc.abstractmethod
    def set(self, key: str, value: ValueLike) -> None:
        """Set ``key`` to ``value``, waking anyone waiting for it."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the value of ``key``, waiting up to the store timeout for it to be set."""

    @abc.abstractmethod
    def add(self, key: str, amount: int) -> int:
        """Atomically add ``amount`` to the integer at ``key`` (0 if unset) and return the sum."""

    @abc.abstractmethod
    def compare_set(self, key: str, expected_value: ValueLike, desired_value: ValueLike) -> bytes:
        """Set ``key`` to ``desired_value`` if it holds ``expected_value`` (or is unset and
        ``expected_value`` is empty); return the value now stored, or ``expected_value`` when the
        key is unset and was not set (torch's semantics)."""

    @abc.abstractmethod
    def wait(self, keys: Sequence[str], timeout: TimeoutLike | None = None) -> None:
        """Block until every key in ``keys`` exists, or raise DistStoreError after ``timeout``."""

    @abc.abstractmethod
    def check(self, keys: Sequence[str]) -> bool:
        """Return True if every key in ``keys`` exists, without waiting."""

    @abc.abstractmethod
    def delete_key(self, key: str) -> bool:
        """Delete ``key``; return True if it existed."""

    @abc.abstractmethod
    def num_keys(self) -> int:
        """Return the number of keys in the store."""

    @abc.abstractmethod
    def list_keys(self) -> list[str]:
        """Return every key in the store."""

    # -- extended API with portable defaults --------------------------------------------------
    def multi_get(self, keys: Sequence[str]) -> list[bytes]:
        """Return the values of ``keys`` in order, waiting for all of them to exist."""
        keys = check_keys(keys)
        self.wait(keys)
        return [self.get(k) for k in keys]

    def multi_set(self, keys: Sequence[str], values: Sequence[ValueLike]) -> None:
        """Set each of ``keys`` to the matching entry of ``values``."""
        keys = check_keys(keys)
        if len(keys) != len(values):
            raise ValueError(f"multi_set got {len(keys)} keys but {len(values)} values")
        for k, v in zip(keys, values, strict=True):
            self.set(k, v)

    def append(self, key: str, value: ValueLike) -> None:
        """Append ``value`` to the bytes at ``key`` (setting it if unset), atomically."""
        check_key(key)
        suffix = to_bytes(value)
        current = b""
        while True:
            new = current + suffix
            seen = self.compare_set(key, current, new)
            if seen == new:
                return
            current = seen

    def barrier(self, key: str, world_size: int, timeout: TimeoutLike | None = None) -> None:
        """Block until ``world_size`` callers have reached the barrier named ``key``."""
        check_key(key)
        arrived = self.add(f"{key}/num_members", 1)
        if arrived == world_size:
            self.set(f"{key}/last_member", b"1")
        else:
            self.wait([f"{key}/last_member"], timeout)

    def queue_push(self, key: str, value: ValueLike) -> None:
        """Push ``value`` onto the back of the queue ``key``."""
        raise NotImplementedError(f"{type(self).__name__} does not support queues")

    def queue_pop(self, key: str, block: bool = True) -> bytes:
        """Pop from the front of queue ``key``, waiting (if ``block``) up to the store timeout."""
        raise NotImplementedError(f"{type(self).__name__} does not support queues")

    def queue_len(self, key: str) -> int:
        """Return the number of items in the queue ``key``."""
        raise NotImplementedError(f"{type(self).__name__} does not support queues")

    def has_extended_api(self) -> bool:
        """True: multi_get, multi_set, append and friends are available (as in torch)."""
        return True

    def clone(self) -> Store:
        """Return an independent handle to the same store (safe to use from another thread)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be cloned")
