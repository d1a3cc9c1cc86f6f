"""``TCPStore``: a store served over TCP by the master rank, reachable from any host.

Mirrors ``torch.distributed.TCPStore``: the master (``is_master=True``) starts a server in a
background thread of its own process (``port=0`` picks a free port, read back from ``.port``);
every instance, master included, is a client of that server.

Nothing waits silently: a client retrying a port where nobody listens, and a master waiting for
clients (``world_size`` with ``wait_for_workers``), log a WARNING every 30 s naming the address
and how many joined (see :mod:`pyc10d.store.tcp.join`; ``PYC10D_RENDEZVOUS_PROGRESS_S`` sets the
interval). Instances given different ``world_size`` values fail at once, naming both.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import weakref
from collections.abc import Sequence
from datetime import timedelta

from ..core.auth import AuthenticationError, UnexpectedReply, client_handshake, load_key
from ..core.errors import DistNetworkError, DistStoreError, QueueEmptyError
from ..core.timeouts import Deadline, TimeoutLike, format_ms
from .base import Store, ValueLike, check_key, check_keys, timeout_error, to_bytes
from .table import INTERNAL_PREFIX
from .tcp.connection import ClientConnection
from .tcp.join import JoinSpec, join, progress_clock, progress_interval
from .tcp.protocol import (
    ARG_LEN,
    AUTH_CONTEXT,
    FRAME_LIMIT,
    HEADER_1ARG,
    HEADER_BODY,
    NO_TIMEOUT,
    Op,
    ProtocolError,
    Status,
    decode,
    encode,
    frame_size,
    max_frame,
    too_large_message,
)
from .tcp.server import StoreServer

log = logging.getLogger(__name__)

JOIN_PREFIX = INTERNAL_PREFIX + "tcpstore/"  # keys of wait_for_workers (see tcp.join)
WORKERS_KEY = JOIN_PREFIX + "num_workers"
WORKERS_READY_KEY = JOIN_PREFIX + "workers_ready"
REPLY_GRACE_S = 10.0  # extra time a client gives the server to answer a server-timed wait
REFUSAL_MAX = 1 << 16  # the longest error frame read from a server that refused a handshake
_OK = int(Status.OK)
_SET, _GET, _ADD = int(Op.SET), int(Op.GET), int(Op.ADD)
_pack_head, _pack_len = HEADER_1ARG.pack, ARG_LEN.pack  # a header with one argument length
_SET_BODY = HEADER_BODY + 8  # payload bytes of a SET besides its key and value
_MAX_PAYLOAD = FRAME_LIMIT - 64  # key and value bytes a frame can carry


class _SharedServers:
    """Servers of ``multi_tenant`` masters in this process, shared per port and ref-counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_port: dict[int, list] = {}

    def acquire(self, port: int, multi_tenant: bool, listen_fd: int | None) -> StoreServer:
        """Start a server on ``port``, or share the running one when ``multi_tenant``."""
        with self._lock:
            entry = self._by_port.get(port) if multi_tenant and port else None
            if entry is not None:
                entry[1] += 1
                return entry[0]
            server = StoreServer(port, listen_fd)
            if multi_tenant:
                self._by_port[server.port] = [server, 1]
            return server

    def release(self, server: StoreServer) -> None:
        """Drop one reference to ``server``; stop it when it was the last."""
        with self._lock:
            entry = self._by_port.get(server.port)
            if entry is not None and entry[0] is server:
                entry[1] -= 1
                if entry[1] > 0:
                    return
                del self._by_port[server.port]
        server.stop()


_servers = _SharedServers()


class _Resources:
    """What a TCPStore must release: its socket and (for a master) its server reference."""

    def __init__(self, server: StoreServer | None) -> None:
        self.conn: ClientConnection | None = None
        self.server = server

    def release(self) -> None:
        """Close the socket and release the server; idempotent."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.server is not None:
            server, self.server = self.server, None
            _servers.release(server)


def _connect(host: str, port: int, seconds: float) -> socket.socket:
    """Connect to ``host:port``, retrying refused connections until ``seconds`` pass.

    Every :func:`progress_interval` seconds of retrying, a WARNING names the address tried.
    """
    deadline = Deadline(seconds if seconds > 0 else 300.0)
    interval = progress_interval()
    started = time.monotonic()
    next_report = started + interval
    delay = 0.01
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(deadline.remaining(), 0.05))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            if deadline.remaining() <= 0:
                raise DistNetworkError(
                    f"TCPStore client timed out after {format_ms(deadline.seconds)} trying to "
                    f"connect to the server at {host}:{port}: {exc}"
                ) from exc
            now = time.monotonic()
            if now >= next_report:
                next_report = now + interval
                log.warning(
                    "pyc10d: TCPStore client still trying to connect to %s:%d (%s), %s; is the "
                    "master (rank 0) running, and are MASTER_ADDR/MASTER_PORT the same on every "
                    "rank?",
                    host,
                    port,
                    exc,
                    progress_clock(now - started, deadline.seconds),
                )
            time.sleep(min(delay, deadline.remaining()))
            delay = min(delay * 2, 0.5)


def _read_refusal(sock: socket.socket, head: bytes) -> str:
    """The message of the store ERROR frame starting with ``head`` (a server that answered the
    authentication hello in the store protocol: it refused the connection)."""
    buf = bytearray(head)
    try:
        while len(buf) < 4 or len(buf) < min(frame_size(buf), REFUSAL_MAX):
            chunk = sock.recv(REFUSAL_MAX)
            if not chunk:
                break
            buf += chunk
        reply = decode(bytes(buf), 0)
    except (OSError, ProtocolError):
        reply = None
    if reply is not None and reply[1] == Status.ERROR and reply[3]:
        return reply[3][0].decode(errors="replace")
    return f"it answered {bytes(buf[:16])!r}..., not a pyc10d TCPStore server?"


def _authenticate(sock: socket.socket, key: bytes, where: str, seconds: float) -> None:
    """Prove to the server at ``where`` that this client knows ``key``, and check its proof."""
    what = f"the TCPStore server at {where}"
    sock.settimeout(seconds if seconds > 0 else None)
    try:
        client_handshake(sock, key, AUTH_CONTEXT, what)
    except UnexpectedReply as exc:
        raise AuthenticationError(
            f"TCPStore client could not authenticate to {what}: {_read_refusal(sock, exc.data)}"
        ) from None
    except AuthenticationError:
        raise
    except OSError as exc:
        raise AuthenticationError(
            f"TCPStore client could not authenticate to {what}: {exc or type(exc).__name__}"
        ) from None


class TCPStore(Store):
    """A key-value store served over TCP (torch.distributed.TCPStore).

    ``world_size`` with ``wait_for_workers`` makes the master wait until that many instances
    (itself included) have connected. ``multi_tenant`` masters in one process share a server.

    With a key (``PYC10D_AUTH_KEY`` or ``PYC10D_AUTH_KEY_FILE``, see :mod:`pyc10d.core.auth`),
    the master's server only serves clients that prove they know it, and every client proves it
    (and checks the server's proof) right after connecting; a failure raises
    :class:`~pyc10d.core.auth.AuthenticationError`. Requests larger than
    ``PYC10D_STORE_MAX_FRAME`` (64 MiB) are refused before they are sent.
    """

    def __init__(
        self,
        host_name: str,
        port: int,
        world_size: int | None = None,
        is_master: bool = False,
        timeout: TimeoutLike = timedelta(seconds=300),
        wait_for_workers: bool = True,
        multi_tenant: bool = False,
        master_listen_fd: int | None = None,
        use_libuv: bool = True,
    ) -> None:
        super().__init__(timeout)
        if not isinstance(host_name, str) or not host_name:
            raise ValueError(f"TCPStore host_name must be a non-empty str, got {host_name!r}")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"TCPStore port must be an int in [0, 65535], got {port!r}")
        if world_size is not None and world_size != -1 and world_size < 1:
            raise ValueError(f"TCPStore world_size must be positive, got {world_size}")
        if port == 0 and not is_master:
            raise ValueError("TCPStore port 0 (pick a free port) is only valid for the master")
        self.host = host_name
        self.world_size = None if world_size == -1 else world_size
        self._lock = threading.Lock()
        self._max_frame = max_frame()
        self._cache_timeouts()
        key = load_key()
        server = _servers.acquire(port, multi_tenant, master_listen_fd) if is_master else None
        self._resources = _Resources(server)
        # ``num`` of SET/MULTI_SET: 1 asks the server to acknowledge the write. Clients do not
        # wait for it (as torch's); the master's own client does: its server thread dies with
        # the process, so a write still queued when the master exits would be lost.
        self._acked = int(server is not None)
        self._finalizer = weakref.finalize(self, self._resources.release)
        self.port: int = server.port if server is not None else port
        try:
            sock = _connect(host_name, self.port, self.timeout.total_seconds())
            try:
                if key is not None:
                    where = f"{host_name}:{self.port}"
                    _authenticate(sock, key, where, self.timeout.total_seconds())
            except BaseException:
                sock.close()
                raise
            self._resources.conn = ClientConnection(sock)
            if self.world_size is not None and wait_for_workers:
                self._join(is_master)
        except BaseException:
            self.close()
            raise

    @property
    def libuvBackend(self) -> bool:
        """Always False: pyc10d's server is a Python epoll loop, not libuv."""
        return False

    def close(self) -> None:
        """Close the connection (and, on the master, stop the server once unused)."""
        self._finalizer()

    def __enter__(self) -> TCPStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _join(self, is_master: bool) -> None:
        """Count this instance in; the master waits until ``world_size`` have joined.

        Every instance publishes its ``world_size``: one that differs from the first's fails at
        once (and so does the master, if still waiting), with both values in the message.
        """
        assert self.world_size is not None
        spec = JoinSpec(
            prefix=JOIN_PREFIX,
            world_size=self.world_size,
            address=f"{self.host}:{self.port}",
            timeout_s=self.timeout.total_seconds(),
            is_master=is_master,
            wait=is_master,
        )
        join(self, spec)

    # -- transport ----------------------------------------------------------------------------
    def set_timeout(self, timeout: TimeoutLike) -> None:
        """Change the default timeout; a negative timeout raises ValueError."""
        super().set_timeout(timeout)
        self._cache_timeouts()

    def _cache_timeouts(self) -> None:
        """Precompute what every request needs from the store timeout (not per call)."""
        seconds = self.timeout.total_seconds()
        self._io_s = seconds or float("inf")  # how long a send, or a plain reply, may take
        self._wait_ms = max(1, round(seconds * 1000)) if seconds > 0 else 0  # GET's server wait
        self._get_reply_s = self._io_timeout(seconds)

    def _io_timeout(self, wait_s: float | None) -> float:
        """How long to wait for the server: the store timeout, or a server-timed wait plus grace."""
        if wait_s is None:
            return self._io_s
        return wait_s + REPLY_GRACE_S if wait_s > 0 else float("inf")

    def _exchange(self, frame: bytes, reply_s: float | None):
        """Send ``frame`` and, unless ``reply_s`` is None, return the reply received within
        ``reply_s`` seconds; errors close the connection."""
        if len(frame) - 4 > self._max_frame:
            raise DistStoreError(too_large_message(len(frame) - 4, self._max_frame, "client"))
        with self._lock:
            conn = self._resources.conn
            if conn is None:
                raise DistStoreError(f"TCPStore to {self.host}:{self.port} is closed")
            try:
                conn.send(frame, self._io_s)
                return None if reply_s is None else conn.receive(reply_s)
            except TimeoutError as exc:
                self._resources.release()
                raise DistStoreError(
                    f"TCPStore timed out after {exc} waiting for the server at "
                    f"{self.host}:{self.port} to answer"
                ) from None
            except (OSError, ValueError) as exc:
                refusal = conn.pending_error() if isinstance(exc, OSError) else None
                self._resources.release()
                if refusal is not None:
                    raise DistStoreError(f"TCPStore server error: {refusal}") from None
                raise DistNetworkError(
                    f"TCPStore lost its connection to the server at {self.host}:{self.port}: {exc}"
                ) from exc

    def _call(self, op: int, num: int = 0, args: Sequence[bytes] = (), wait_s: float | None = None):
        """Send one request and return ``(num, args)`` of its reply, raising on error statuses."""
        return _result(*self._exchange(encode(op, num, args), self._io_timeout(wait_s)))

    def _post(self, frame: bytes) -> None:
        """Send a SET/MULTI_SET ``frame`` (its ``num`` is ``self._acked``); wait for the
        server's answer if it asked for one."""
        if self._acked:
            _result(*self._exchange(frame, self._io_s))
        else:
            self._exchange(frame, None)

    def _blocking(self, op: int, keys: list[str], timeout: TimeoutLike | None):
        """A request the server holds until ``keys`` exist; its timeout becomes a DistStoreError."""
        seconds = self._wait_seconds(timeout)
        millis = max(1, round(seconds * 1000)) if seconds > 0 else 0
        try:
            return self._call(op, millis, [k.encode() for k in keys], wait_s=seconds)
        except _ServerTimeout as exc:
            raise timeout_error("TCPStore", keys, exc.missing, seconds) from None

    # -- Store API ----------------------------------------------------------------------------
    def set(self, key: str, value: ValueLike) -> None:
        """Set ``key`` to ``value``."""
        if type(key) is not str:
            check_key(key)
        if type(value) is not bytes:
            value = to_bytes(value)
        raw = key.encode()
        size = len(value)
        if len(raw) + size > _MAX_PAYLOAD:
            raise ValueError(f"store value of {size} bytes exceeds the {FRAME_LIMIT}-byte limit")
        head = _pack_head(_SET_BODY + len(raw) + size, _SET, 2, self._acked, len(raw))
        frame = b"".join((head, raw, _pack_len(size), value))
        if self._acked:
            _result(*self._exchange(frame, self._io_s))
        else:  # not waiting for the server, as torch's client (see ``_acked``)
            self._exchange(frame, None)

    def get(self, key: str) -> bytes:
        """Return ``key``'s value, waiting up to the store timeout for it."""
        if type(key) is not str:
            check_key(key)
        raw = key.encode()
        head = _pack_head(HEADER_BODY + 4 + len(raw), _GET, 1, self._wait_ms, len(raw))
        status, num, args = self._exchange(head + raw, self._get_reply_s)
        if status == _OK:
            return args[0]
        try:
            return _result(status, num, args)[1][0]
        except _ServerTimeout as exc:
            seconds = self.timeout.total_seconds()
            raise timeout_error("TCPStore", [key], exc.missing, seconds) from None

    def get_nowait(self, key: str) -> bytes | None:
        """Return ``key``'s value, or None if it is not set (pyc10d extension)."""
        check_key(key)
        if not self.check([key]):
            return None
        return self.get(key)

    def add(self, key: str, amount: int) -> int:
        """Atomically add ``amount`` to the counter at ``key`` and return the new value."""
        if type(key) is not str:
            check_key(key)
        raw = key.encode()
        try:
            head = _pack_head(HEADER_BODY + 4 + len(raw), _ADD, 1, int(amount), len(raw))
        except struct.error:
            raise ValueError(f"add: amount {amount} is outside the int64 range") from None
        status, num, args = self._exchange(head + raw, self._io_s)
        return num if status == _OK else _result(status, num, args)[0]

    def compare_set(self, key: str, expected_value: ValueLike, desired_value: ValueLike) -> bytes:
        """torch's compare-and-set; see :meth:`Store.compare_set`."""
        args = (check_key(key).encode(), to_bytes(expected_value), to_bytes(desired_value))
        return self._call(Op.COMPARE_SET, 0, args)[1][0]

    def wait(self, keys: Sequence[str], timeout: TimeoutLike | None = None) -> None:
        """Block until all ``keys`` exist, or raise DistStoreError after ``timeout``."""
        self._blocking(Op.WAIT, check_keys(keys), timeout)

    def multi_get(self, keys: Sequence[str]) -> list[bytes]:
        """Values of ``keys``, waiting for all of them (one round trip)."""
        keys = check_keys(keys)
        return self._blocking(Op.MULTI_GET, keys, None)[1] if keys else []

    def multi_set(self, keys: Sequence[str], values: Sequence[ValueLike]) -> None:
        """Set many keys in one round trip."""
        keys = check_keys(keys)
        if len(keys) != len(values):
            raise ValueError(f"multi_set got {len(keys)} keys but {len(values)} values")
        args: list[bytes] = []
        for key, value in zip(keys, values, strict=True):
            args += (key.encode(), to_bytes(value))
        self._post(encode(Op.MULTI_SET, self._acked, args))

    def append(self, key: str, value: ValueLike) -> None:
        """Append ``value`` to ``key`` atomically (sets it if unset)."""
        self._call(Op.APPEND, 0, (check_key(key).encode(), to_bytes(value)))

    def check(self, keys: Sequence[str]) -> bool:
        """True if all ``keys`` exist."""
        return bool(self._call(Op.CHECK, 0, [k.encode() for k in check_keys(keys)])[0])

    def delete_key(self, key: str) -> bool:
        """Delete ``key``; True if it existed."""
        return bool(self._call(Op.DELETE, 0, (check_key(key).encode(),))[0])

    def num_keys(self) -> int:
        """Number of keys in the store."""
        return self._call(Op.NUM_KEYS)[0]

    def list_keys(self) -> list[str]:
        """Every key in the store."""
        return [k.decode() for k in self._call(Op.LIST_KEYS)[1]]

    def queue_push(self, key: str, value: ValueLike) -> None:
        """Push ``value`` onto queue ``key``."""
        self._call(Op.QUEUE_PUSH, 0, (check_key(key).encode(), to_bytes(value)))

    def queue_pop(self, key: str, block: bool = True) -> bytes:
        """Pop the front of queue ``key``, waiting up to the store timeout if ``block``."""
        check_key(key)
        if not block:
            return self._call(Op.QUEUE_POP, NO_TIMEOUT, (key.encode(),))[1][0]
        return self._blocking(Op.QUEUE_POP, [key], None)[1][0]

    def queue_len(self, key: str) -> int:
        """Number of items in queue ``key``."""
        return self._call(Op.QUEUE_LEN, 0, (check_key(key).encode(),))[0]

    def ping(self) -> None:
        """One round trip to the server (raises if it is gone)."""
        self._call(Op.PING)

    def clone(self) -> TCPStore:
        """A new client connection to the same server, for use from another thread."""
        return TCPStore(self.host, self.port, None, False, self.timeout, wait_for_workers=False)

    def __repr__(self) -> str:
        return f"TCPStore(host={self.host!r}, port={self.port})"


def _result(status: int, num: int, args: list[bytes]) -> tuple[int, list[bytes]]:
    """``(num, args)`` of an OK reply; the exception an error status stands for otherwise."""
    if status == _OK:
        return num, args
    if status == Status.TIMEOUT:
        raise _ServerTimeout([k.decode(errors="replace") for k in args])
    message = args[0].decode(errors="replace") if args else ""
    if status == Status.VALUE_ERROR:
        raise ValueError(message)
    if status == Status.QUEUE_EMPTY:
        raise QueueEmptyError("queue is empty")
    raise DistStoreError(f"TCPStore server error: {message or Status(status).name}")


class _ServerTimeout(Exception):
    """Internal: the server answered TIMEOUT for the keys in ``missing``."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(missing)
        self.missing = missing
