"""The TCPStore server: one background thread, an epoll event loop, any number of clients.

Blocking requests (GET, WAIT, MULTI_GET, blocking QUEUE_POP) never block the loop: they park a
``Waiter`` that is answered when its keys appear or its deadline passes; a client that
disconnects takes its parked requests with it. A connection that sends an invalid frame, or
closes mid-frame, is dropped; everyone else keeps being served.

Limits (:class:`ServerLimits`, read from the environment when the server starts): a request
frame over ``PYC10D_STORE_MAX_FRAME`` bytes is answered with an ERROR naming the limit, and the
connection dropped; past ``PYC10D_STORE_MAX_CONNECTIONS`` connections a new one is refused the
same way; a connection is not read from while more than ``out_pause`` bytes of its replies are
unsent (a client that sends requests but never reads cannot grow the server's memory).

With a key (:mod:`pyc10d.core.auth`), every connection must pass the challenge-response before
its first request is read; one that fails, sends something else, or stays silent for
``AUTH_TIMEOUT_S``, is logged with its address and dropped. Without a key, a client that tries
to authenticate is told that this server has none.

Replies are batched: those produced while serving one wake-up of the loop are appended to their
connection's output buffer and written with one ``send`` per connection before the loop waits
again. Requests are read with ``recv_into`` one shared buffer and parsed in place.

A dropped connection first gets its error reply, then lingers (writes shut down, input thrown
away) until the client closes or ``LINGER_S`` pass, so that closing does not reset the reply
away before the client has read it.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ...core.auth import (
    KEY_VARIABLES,
    NO_AUTH_REPLY,
    HandshakeFailed,
    ServerHandshake,
    hello_state,
    load_key,
)
from ...core.errors import DistNetworkError
from ..table import INTERNAL_PREFIX, KeyValueTable
from .protocol import (
    ARG_LEN,
    AUTH_CONTEXT,
    FRAME_LIMIT,
    HEADER,
    HEADER_1ARG,
    HEADER_BODY,
    NO_TIMEOUT,
    FrameTooLarge,
    Op,
    ProtocolError,
    Status,
    check_length,
    encode,
    frame_size,
    max_frame,
    too_large_message,
)

log = logging.getLogger(__name__)

RECV_SIZE = 1 << 18  # the shared receive buffer: many pipelined requests per recv
HEADER_SIZE, HEADER_1ARG_SIZE = HEADER.size, HEADER_1ARG.size
SET = int(Op.SET)
OK, VALUE_ERROR = int(Status.OK), int(Status.VALUE_ERROR)  # plain ints: packed per reply
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # the range of a counter (and of ``num``)
MAX_CONNECTIONS_ENV = "PYC10D_STORE_MAX_CONNECTIONS"
DEFAULT_MAX_CONNECTIONS = 16384
OUT_PAUSE = 8 << 20  # unsent reply bytes at which a connection stops being read
AUTH_TIMEOUT_S = 10.0  # how long a new connection may take to authenticate (with a key)
LINGER_S = 5.0  # how long a dropped connection waits for its client to read the error
MAX_LINGERING = 64  # past this many lingering connections, drop new ones at once
COMPACT_MIN = 1024  # answered waiters left in the timer heap before it is rebuilt without them
AUTH_REQUIRED = (
    f"authentication required: this TCPStore server has a key; set {KEY_VARIABLES} to the "
    "job's key on this process"
)

if hasattr(select, "epoll"):
    READ, WRITE = select.EPOLLIN, select.EPOLLOUT
    READ_OR_HUP = select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR
else:  # pragma: no cover - non-Linux
    READ, WRITE = select.POLLIN, select.POLLOUT
    READ_OR_HUP = select.POLLIN | select.POLLHUP | select.POLLERR


class _Poller:
    """epoll where available (Linux), else poll; timeouts in seconds, None blocks."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._impl = self._epoll or select.poll()

    def register(self, fd: int, mask: int) -> None:
        """Watch ``fd`` for ``mask``."""
        self._impl.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        """Change what ``fd`` is watched for."""
        self._impl.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd``."""
        self._impl.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        """Ready ``(fd, mask)`` pairs, waiting up to ``timeout`` seconds (negative: forever)."""
        if self._epoll is not None:
            return self._epoll.poll(timeout)
        return self._impl.poll(None if timeout < 0 else timeout * 1000)  # pragma: no cover

    def raw_poll(self) -> Callable[[float], list[tuple[int, int]]]:
        """:meth:`poll` itself where epoll is there (no wrapper call per wake-up)."""
        return self._epoll.poll if self._epoll is not None else self.poll

    def close(self) -> None:
        """Release the epoll descriptor."""
        if self._epoll is not None:
            self._epoll.close()


@dataclass(frozen=True)
class ServerLimits:
    """What one client may cost the server: the request frame size, the connection count, and
    the unsent reply bytes at which a connection stops being read."""

    max_frame: int
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    out_pause: int = OUT_PAUSE

    @classmethod
    def from_env(cls) -> ServerLimits:
        """``PYC10D_STORE_MAX_FRAME`` and ``PYC10D_STORE_MAX_CONNECTIONS``, or the defaults."""
        text = os.environ.get(MAX_CONNECTIONS_ENV, "").strip()
        connections = DEFAULT_MAX_CONNECTIONS
        if text:
            try:
                connections = int(text)
            except ValueError:
                connections = 0
            if connections < 1:
                raise ValueError(f"{MAX_CONNECTIONS_ENV} must be a positive int, got {text!r}")
        return cls(max_frame(), connections)


class _SniffGate:
    """No key: a connection's first bytes, held until they show they are no auth HELLO."""

    __slots__ = ("head",)

    def __init__(self) -> None:
        self.head = b""


class _AuthGate:
    """A key: the handshake a connection must pass before its first request is read."""

    __slots__ = ("handshake",)

    def __init__(self, key: bytes) -> None:
        self.handshake = ServerHandshake(key, AUTH_CONTEXT)


_DISCARD = object()  # the gate of a dropped, lingering connection: its input is thrown away


class _Connection:
    """One client's socket and buffers.

    ``closed``: no longer served (dropped or closed); ``fd_open``: the socket is still open (a
    dropped connection lingers, see the module doc). ``gate`` (None once passed) holds what must
    happen before requests are read. ``parked``: this client's waiting requests. ``outbuf``:
    replies not yet written; while ``writing`` the socket was full and the loop waits until it
    is writable, otherwise they go out at the end of the wake-up. ``mask``: the events watched.
    """

    __slots__ = (
        "closed",
        "fd_open",
        "gate",
        "hold",
        "inbuf",
        "mask",
        "needed",
        "outbuf",
        "parked",
        "paused",
        "peer",
        "sock",
        "writing",
    )

    def __init__(self, sock: socket.socket, peer: object) -> None:
        self.sock = sock
        self.peer = peer
        self.inbuf = bytearray()  # the start of a frame that spans reads
        self.needed = 0  # bytes ``inbuf`` must reach before it holds a whole frame
        self.outbuf = bytearray()
        self.closed = False
        self.hold = False  # stop parsing requests: closed, or too many replies unsent
        self.fd_open = True
        self.gate: object | None = None
        self.parked: set[_Waiter] = set()
        self.paused = False  # not read from until ``outbuf`` drains below the limit
        self.writing = False
        self.mask = READ

    @property
    def address(self) -> str:
        """``host:port`` of the client, for log lines."""
        peer = self.peer
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return str(peer)


_Handler = Callable[[_Connection, int, list[bytes]], None]  # (conn, num, args) of a request
# (conn, num, nargs, data, start, end) -> next: serves the request frame data[start:end] (maybe
# more of the same kind after it) and returns where the next request frame starts
_RawHandler = Callable[[_Connection, int, int, bytes, int, int], int]


def _with_args(handler: _Handler) -> _RawHandler:
    """``handler`` served with its arguments parsed into a list."""

    def serve(conn: _Connection, num: int, nargs: int, data: bytes, start: int, end: int) -> int:
        handler(conn, num, _parse_args(data, start + HEADER_SIZE, end, nargs))
        return end

    return serve


class _Waiter:
    """A parked blocking request."""

    __slots__ = ("conn", "done", "keys", "op", "parked_on", "timed")

    def __init__(self, conn: _Connection, op: int, keys: list[str]) -> None:
        self.conn = conn
        self.op = op
        self.keys = keys
        self.done = False
        self.parked_on: str | None = None
        self.timed = False  # it has an entry in the timer heap


def _check_partial_header(data: bytes, offset: int, limit: int) -> None:
    """Refuse an incomplete frame as soon as its length says it is too large."""
    if len(data) - offset >= 4:
        check_length(ARG_LEN.unpack_from(data, offset)[0], limit)


_unpack_len = ARG_LEN.unpack_from  # (length,) of the argument at an offset


def _parse_args(data: bytes, pos: int, end: int, nargs: int) -> list[bytes]:
    """The ``nargs`` length-prefixed arguments between ``pos`` and the frame's ``end``."""
    args = []
    for _ in range(nargs):
        if pos + 4 > end:
            raise ProtocolError("argument header past the end of the frame")
        (length,) = ARG_LEN.unpack_from(data, pos)
        pos += 4
        if pos + length > end:
            raise ProtocolError("argument past the end of the frame")
        args.append(data[pos : pos + length])
        pos += length
    if pos != end:
        raise ProtocolError("trailing bytes in frame")
    return args


def _listen_socket(port: int) -> socket.socket:
    """Bind a listening socket on every interface (dual-stack where IPv6 exists)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = "address already in use (EADDRINUSE)" if exc.errno == errno.EADDRINUSE else exc
        raise DistNetworkError(
            f"TCPStore server failed to listen on port {port}: {reason}"
        ) from exc
    return sock


def _open_spare() -> int:
    """A descriptor held in reserve, freed to tell a client the server ran out of them."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return -1


class StoreServer:
    """Serves a :class:`KeyValueTable` to TCPStore clients from a daemon thread.

    ``key`` (``"env"``: :func:`~pyc10d.core.auth.load_key`, from the environment) turns
    authentication on; ``limits`` default to :meth:`ServerLimits.from_env`.
    """

    def __init__(
        self,
        port: int = 0,
        listen_fd: int | None = None,
        key: bytes | Literal["env"] | None = "env",
        limits: ServerLimits | None = None,
    ) -> None:
        self._key: bytes | None = load_key() if key == "env" else (key or None)
        self._limits = limits if limits is not None else ServerLimits.from_env()
        if listen_fd is not None:
            self._listener = socket.socket(fileno=listen_fd)
        else:
            self._listener = _listen_socket(port)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._table = KeyValueTable()
        self._key_waiters: dict[str, dict[_Waiter, None]] = {}
        self._queue_waiters: dict[str, deque[_Waiter]] = {}
        self._timers: list[tuple[float, int, _Waiter]] = []
        self._dead_timers = 0  # entries of ``_timers`` whose waiter was answered or dropped
        self._conn_timers: list[tuple[float, int, _Connection]] = []  # auth and linger limits
        self._timer_ids = itertools.count()
        self._connections: set[_Connection] = set()
        self._lingering = 0
        self._spare = _open_spare()
        self._poller = _Poller()
        self._by_fd: dict[int, _Connection] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stopping = False
        self._handlers = self._request_handlers()
        self._scratch = bytearray(RECV_SIZE)  # every recv lands here (one thread reads)
        self._scratch_view = memoryview(self._scratch)
        self._dirty: list[_Connection] = []  # connections with replies to write this wake-up
        self._thread = threading.Thread(
            target=self._run, name=f"pyc10d-store-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def authenticates(self) -> bool:
        """Whether clients must authenticate (the server has a key)."""
        return self._key is not None

    def stats(self) -> dict[str, int]:
        """Counters, for tests and monitoring: open ``connections`` (lingering ones included),
        ``parked`` blocking requests, ``timers`` (heap entries, answered ones included until
        compacted), ``lingering`` dropped connections, ``paused`` connections (not read until
        their replies drain) and ``buffered`` bytes (requests and replies held)."""
        key_waiters = list(self._key_waiters.values())
        queue_waiters = list(self._queue_waiters.values())
        connections = list(self._connections)
        return {
            "connections": len(connections),
            "parked": sum(len(w) for w in key_waiters) + sum(len(q) for q in queue_waiters),
            "timers": len(self._timers),
            "lingering": self._lingering,
            "paused": sum(c.paused for c in connections),
            "buffered": sum(len(c.inbuf) + len(c.outbuf) for c in connections),
        }

    # -- lifecycle ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop serving, close every connection and join the thread."""
        if self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _run(self) -> None:
        """The event loop: serve the ready sockets and the due timers until :meth:`stop`.

        It blocks in ``epoll_wait`` whenever there is nothing to do (no spinning: on a busy
        host a spinning server steals the CPU its clients need).
        """
        poll = self._poller.raw_poll()
        listen_fd, wake_fd = self._listener.fileno(), self._wake_r
        self._poller.register(listen_fd, READ)
        self._poller.register(wake_fd, READ)
        dispatch = self._dispatch  # bound once: no method object per loop iteration
        flush = self._flush_dirty
        try:
            while not self._stopping:
                timed = self._timers or self._conn_timers
                events = poll(self._next_timer_delay() if timed else -1)
                if events:
                    dispatch(events, listen_fd, wake_fd)
                if self._timers or self._conn_timers:
                    self._fire_timers()
                if self._dirty:
                    flush()
        except Exception:  # pragma: no cover - a bug in the loop must not pass silently
            log.exception("pyc10d TCPStore server loop crashed")
        finally:
            self._shut_down()

    def _dispatch(self, events: list[tuple[int, int]], listen_fd: int, wake_fd: int) -> None:
        """Serve the ready ``(fd, mask)`` pairs: clients, the listener and the wake-up pipe."""
        by_fd = self._by_fd
        for fd, mask in events:
            conn = by_fd.get(fd)
            if conn is not None:
                if mask & READ_OR_HUP:
                    self._on_readable(conn)
                if mask & WRITE and conn.fd_open:
                    self._write(conn)
            elif fd == listen_fd:
                self._accept()
            elif fd == wake_fd:
                with contextlib.suppress(OSError):
                    os.read(wake_fd, 64)

    def _shut_down(self) -> None:
        """Close every connection, the poller, the listener and the wake-up pipe."""
        for conn in list(self._connections):
            self._close(conn)
        self._poller.close()
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._spare >= 0:
            os.close(self._spare)
            self._spare = -1

    # -- sockets ------------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving the others
                log.warning("TCPStore server accept failed: %s", exc)
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._shed()
                return
            self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer: object) -> None:
        """Serve a new connection, or refuse it with an ERROR past the connection limit."""
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(sock, peer)
        self._connections.add(conn)
        self._by_fd[sock.fileno()] = conn
        self._poller.register(sock.fileno(), READ)
        limit = self._limits.max_connections
        if len(self._connections) - self._lingering > limit:
            log.warning(
                "TCPStore server refusing client %s: %d connections already (%s)",
                conn.address,
                limit,
                MAX_CONNECTIONS_ENV,
            )
            message = (
                f"TCPStore server on port {self.port} refused this connection: it already has "
                f"{limit} (raise {MAX_CONNECTIONS_ENV} on the master, or close unused stores)"
            )
            self._drop(conn, encode(Status.ERROR, 0, [message.encode()]))
        elif self._key is not None:
            conn.gate = _AuthGate(self._key)
            self._add_conn_timer(conn, AUTH_TIMEOUT_S)
        else:
            conn.gate = _SniffGate()

    def _shed(self) -> None:
        """Out of descriptors: free the spare one to accept a waiting client and tell it so."""
        if self._spare < 0:
            return
        os.close(self._spare)
        try:
            sock, _ = self._listener.accept()
        except OSError:
            pass
        else:
            message = f"TCPStore server on port {self.port} is out of file descriptors"
            with sock, contextlib.suppress(OSError):
                sock.setblocking(False)
                sock.send(encode(Status.ERROR, 0, [message.encode()]))
        finally:
            self._spare = _open_spare()

    def _release_waiters(self, conn: _Connection) -> None:
        """Forget ``conn``'s parked requests (its client is gone or dropped)."""
        parked = conn.parked
        if not parked:
            return
        queues = set()
        for waiter in parked:
            waiter.done = True
            if waiter.timed:
                self._dead_timers += 1
            if waiter.op == Op.QUEUE_POP:
                queues.add(waiter.keys[0])
                continue
            waiters = self._key_waiters.get(waiter.parked_on)  # type: ignore[arg-type]
            if waiters is not None:
                waiters.pop(waiter, None)
                if not waiters:
                    del self._key_waiters[waiter.parked_on]  # type: ignore[arg-type]
        parked.clear()
        for key in queues:
            waiting = deque(w for w in self._queue_waiters.get(key, ()) if not w.done)
            if waiting:
                self._queue_waiters[key] = waiting
            else:
                self._queue_waiters.pop(key, None)
        self._compact_timers()

    def _close(self, conn: _Connection) -> None:
        """Close ``conn`` now, forgetting its parked requests."""
        if not conn.fd_open:
            return
        if conn.closed and conn.gate is _DISCARD:
            self._lingering -= 1
        conn.closed = conn.hold = True
        conn.fd_open = False
        self._release_waiters(conn)
        self._connections.discard(conn)
        fd = conn.sock.fileno()
        self._by_fd.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._poller.unregister(fd)
        conn.sock.close()

    def _drop(self, conn: _Connection, reply: bytes) -> None:
        """Stop serving ``conn``: send ``reply``, shut down writing once it is out, throw away
        what the client still sends, and close when it closes (or after ``LINGER_S``)."""
        if conn.closed:
            return
        if reply:
            self._send(conn, reply)
            if not conn.writing and not self._send_now(conn):  # now, not after the wake-up
                return
        if self._lingering >= MAX_LINGERING:
            self._close(conn)
            return
        conn.closed = conn.hold = True
        conn.gate = _DISCARD
        conn.paused = False
        conn.writing = bool(conn.outbuf)
        self._lingering += 1
        self._release_waiters(conn)
        conn.inbuf = bytearray()
        with contextlib.suppress(OSError, ValueError):
            self._set_interest(conn)
            if not conn.outbuf:
                conn.sock.shutdown(socket.SHUT_WR)
        self._add_conn_timer(conn, LINGER_S)

    def _on_readable(self, conn: _Connection) -> None:
        try:
            size = conn.sock.recv_into(self._scratch)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            size = 0
        if not size:
            self._close(conn)  # a frame cut off mid-way is dropped with the connection
            return
        data: bytes | None = self._scratch_view[:size].tobytes()  # one small copy, no new page
        if conn.gate is not None:  # a new connection (or a dropped one)
            data = self._pass_gate(conn, data)
            if not data:
                return
        self._consume(conn, data)

    def _pass_gate(self, conn: _Connection, data: bytes) -> bytes | None:
        """Run ``data`` through ``conn``'s gate; return what is left for the request parser."""
        gate = conn.gate
        if gate is _DISCARD:
            return None
        if isinstance(gate, _SniffGate):
            head = gate.head + data
            state = hello_state(head)
            if state is None:
                gate.head = head
                return None
            if state:
                log.warning(
                    "TCPStore server dropping client %s: it tried to authenticate, but this "
                    "server has no key (neither %s is set on the master)",
                    conn.address,
                    KEY_VARIABLES,
                )
                self._drop(conn, NO_AUTH_REPLY)
                return None
            conn.gate = None
            return head
        assert isinstance(gate, _AuthGate)
        handshake = gate.handshake
        try:
            reply = handshake.feed(data)
        except HandshakeFailed as exc:
            log.warning("TCPStore server dropping client %s: %s", conn.address, exc.reason)
            if exc.foreign:
                self._drop(conn, encode(Status.ERROR, 0, [AUTH_REQUIRED.encode()]))
            else:
                self._drop(conn, exc.reply)
            return None
        if reply:
            self._send(conn, reply)
        if not handshake.done or conn.closed:
            return None
        conn.gate = None
        return handshake.leftover or None

    def _consume(self, conn: _Connection, data: bytes) -> None:
        """Serve the requests in ``data`` (after any buffered start of a frame)."""
        if conn.inbuf:  # finishing a frame that spans reads: gather until it is complete
            conn.inbuf += data
            if len(conn.inbuf) < conn.needed:
                return
            data = bytes(conn.inbuf)
            conn.inbuf.clear()
        try:
            offset = self._serve(conn, data)
        except FrameTooLarge as exc:
            self._refuse_frame(conn, exc)
            return
        except (ProtocolError, UnicodeDecodeError, ValueError, IndexError, struct.error) as exc:
            log.warning("TCPStore server dropping client %s: %s", conn.address, exc)
            self._close(conn)
            return
        if conn.closed:
            return
        if offset < len(data):
            conn.inbuf += memoryview(data)[offset:]
            conn.needed = frame_size(conn.inbuf)
        if conn.hold and not conn.paused:
            conn.paused = True  # resumed by _write once the client reads its replies
            self._set_interest(conn)

    def _serve(self, conn: _Connection, data: bytes) -> int:
        """Serve the whole request frames at the start of ``data``; return where the rest starts.

        Raises ProtocolError (and FrameTooLarge) for frames that cannot be valid.
        """
        handlers = self._handlers
        limit = self._limits.max_frame
        unpack = HEADER.unpack_from
        end = len(data)
        offset = 0
        while not conn.hold:
            if end - offset < HEADER_SIZE:
                _check_partial_header(data, offset, limit)
                break
            size, code, nargs, num = unpack(data, offset)
            if not HEADER_BODY <= size <= limit:
                check_length(size, limit)
            frame_end = offset + 4 + size
            if frame_end > end:
                break
            handler = handlers.get(code)
            if handler is None:
                raise ProtocolError(f"unknown opcode {code}")
            offset = handler(conn, num, nargs, data, offset, frame_end)
        return offset

    def _refuse_frame(self, conn: _Connection, exc: FrameTooLarge) -> None:
        """Answer an oversized request with an ERROR naming the limit, and drop the client."""
        log.warning(
            "TCPStore server dropping client %s: a request of %d bytes, over the %d-byte limit",
            conn.address,
            exc.size,
            exc.limit,
        )
        message = too_large_message(exc.size, exc.limit, "server")
        self._drop(conn, encode(Status.ERROR, 0, [message.encode()]))

    def _reply(self, conn: _Connection, status: int, num: int = 0, args=()) -> None:
        if not conn.closed:
            self._send(conn, encode(status, num, args))

    def _send(self, conn: _Connection, frame: bytes, tail: bytes = b"") -> None:
        """Queue ``frame`` (then ``tail``) for ``conn``, written at the end of this wake-up (or
        when the socket takes more); past the limit, stop reading the client's requests."""
        out = conn.outbuf
        if not out and not conn.writing:
            self._dirty.append(conn)
        out += frame
        if tail:
            out += tail
        if len(out) >= self._limits.out_pause:
            conn.hold = True

    def _flush_dirty(self) -> None:
        """Write the replies queued in this wake-up: one ``send`` per connection."""
        while self._dirty:
            dirty, self._dirty = self._dirty, []
            for conn in dirty:
                if conn.fd_open and conn.outbuf and not conn.writing:
                    self._write(conn)

    def _send_now(self, conn: _Connection) -> bool:
        """Write what the socket takes of ``conn.outbuf``; False if that closed the connection."""
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self._close(conn)
            return False
        del conn.outbuf[:sent]
        return True

    def _write(self, conn: _Connection) -> None:
        """Write ``conn``'s replies; wait until it is writable for the rest, resume reading its
        requests once they drain below the limit, finish dropping it once they are all out."""
        if not self._send_now(conn):
            return
        out = conn.outbuf
        if conn.hold and not conn.closed and len(out) < self._limits.out_pause:
            conn.hold = False
            if conn.paused:
                conn.paused = False
                conn.writing = bool(out)
                self._set_interest(conn)
                self._consume(conn, b"")  # the requests read before the pause
                return
        if conn.writing != bool(out):
            conn.writing = bool(out)
            self._set_interest(conn)
        if not out and conn.closed:  # a dropped connection's last reply is out
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_WR)

    def _set_interest(self, conn: _Connection) -> None:
        """Watch ``conn`` for what it needs now: requests unless paused, room while writing."""
        mask = (0 if conn.paused else READ) | (WRITE if conn.writing else 0)
        if mask != conn.mask and conn.fd_open:
            conn.mask = mask
            self._poller.modify(conn.sock.fileno(), mask)

    # -- requests -----------------------------------------------------------------------------
    def _request_handlers(self) -> dict[int, _RawHandler]:
        """The handler of each opcode keyed by plain ``int`` (fast lookups). SET, GET and ADD,
        the hot ones, parse their own arguments; the others get them as a list."""
        handlers: dict[Op, _Handler] = {
            Op.SET: self._on_set,
            Op.GET: self._on_get,
            Op.ADD: self._on_add,
            Op.COMPARE_SET: self._on_compare_set,
            Op.WAIT: self._on_wait,
            Op.CHECK: self._on_check,
            Op.DELETE: self._on_delete,
            Op.NUM_KEYS: self._on_num_keys,
            Op.LIST_KEYS: self._on_list_keys,
            Op.MULTI_GET: self._on_multi_get,
            Op.MULTI_SET: self._on_multi_set,
            Op.APPEND: self._on_append,
            Op.QUEUE_PUSH: self._on_queue_push,
            Op.QUEUE_POP: self._on_queue_pop,
            Op.QUEUE_LEN: self._on_queue_len,
            Op.PING: self._on_ping,
        }
        raw = {int(op): _with_args(handler) for op, handler in handlers.items()}
        raw[int(Op.SET)] = self._serve_set
        raw[int(Op.GET)] = self._serve_get
        raw[int(Op.ADD)] = self._serve_add
        return raw

    def _serve_set(self, conn: _Connection, num: int, nargs: int, data, start, end) -> int:
        """SET, parsed in place, with the unacknowledged SETs right after it in ``data``: a
        client writing many keys sends them back to back."""
        after = self._serve_sets(conn, data, start) if not num else start
        if after == start:  # acknowledged, or not a plain key and value: the general way
            self._on_set(conn, num, _parse_args(data, start + HEADER_SIZE, end, nargs))
            return end
        return after

    def _serve_sets(self, conn: _Connection, data: bytes, offset: int) -> int:
        """Apply the unacknowledged, well-formed SETs from ``offset`` on; return where the
        first other frame (or an incomplete one) starts."""
        table = self._table
        values = table.data
        waiters = self._key_waiters
        limit = self._limits.max_frame
        unpack = HEADER_1ARG.unpack_from
        end = len(data)
        while offset + HEADER_1ARG_SIZE <= end:
            size, code, nargs, num, key_len = unpack(data, offset)
            frame_end = offset + 4 + size
            key_end = offset + HEADER_1ARG_SIZE + key_len
            if code != SET or nargs != 2 or num or size > limit or frame_end > end:
                break
            if key_end + 4 > frame_end or key_end + 4 + _unpack_len(data, key_end)[0] != frame_end:
                break
            key = data[offset + HEADER_1ARG_SIZE : key_end].decode()
            if key not in values and not key.startswith(INTERNAL_PREFIX):
                table.num_user_keys += 1
            values[key] = data[key_end + 4 : frame_end]
            offset = frame_end
            if waiters:  # waiters are answered before the writer (see _on_set)
                self._key_changed(key)
                if conn.hold:
                    break
        return offset

    def _serve_get(self, conn: _Connection, num: int, nargs: int, data, start, end) -> int:
        """GET, parsed in place: the value of a key already set is sent at once."""
        start += HEADER_SIZE
        if nargs == 1 and start + 4 + _unpack_len(data, start)[0] == end:
            value = self._table.data.get(data[start + 4 : end].decode())
            if value is not None and len(value) < FRAME_LIMIT - 64:
                size = len(value)
                self._send(conn, HEADER_1ARG.pack(HEADER_BODY + 4 + size, OK, 1, 0, size), value)
                return end
        self._on_get(conn, num, _parse_args(data, start, end, nargs))
        return end

    def _serve_add(self, conn: _Connection, num: int, nargs: int, data, start, end) -> int:
        """ADD, parsed in place."""
        start += HEADER_SIZE
        if nargs == 1 and start + 4 + _unpack_len(data, start)[0] == end:
            self._add(conn, num, data[start + 4 : end].decode())
        else:
            self._on_add(conn, num, _parse_args(data, start, end, nargs))
        return end

    def _on_get(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """GET: the key's value once it exists (TIMEOUT after ``num`` ms, 0: never)."""
        waiter = _Waiter(conn, Op.GET, [a.decode() for a in args])
        if not self._try_finish(waiter):
            self._add_timer(waiter, num)

    def _on_wait(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """WAIT: OK once every key exists (TIMEOUT after ``num`` ms, 0: never)."""
        waiter = _Waiter(conn, Op.WAIT, [a.decode() for a in args])
        if not self._try_finish(waiter):
            self._add_timer(waiter, num)

    def _on_multi_get(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """MULTI_GET: the keys' values once they all exist (TIMEOUT after ``num`` ms, 0: never)."""
        waiter = _Waiter(conn, Op.MULTI_GET, [a.decode() for a in args])
        if not self._try_finish(waiter):
            self._add_timer(waiter, num)

    def _on_set(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """SET: store the value; acknowledged only when ``num`` asks (clients do not wait)."""
        key = args[0].decode()
        self._table.set(key, args[1])
        # waiters are answered before the writer, so a writer that exits as soon as it
        # hears back cannot take the (in-process) server down before they are told
        if self._key_waiters:
            self._key_changed(key)
        if num:  # acknowledged only when asked: clients do not wait for SET (as in torch)
            self._reply(conn, Status.OK)

    def _on_add(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """ADD: add ``num`` to the key's integer value; reply with the total."""
        self._add(conn, num, args[0].decode())

    def _add(self, conn: _Connection, num: int, key: str) -> None:
        """Serve an ADD of ``num`` to ``key``."""
        try:
            total = self._table.add(key, num, INT64_MIN, INT64_MAX)
        except ValueError as exc:
            self._reply(conn, VALUE_ERROR, 0, [str(exc).encode()])
            return
        if self._key_waiters:
            self._key_changed(key)
        if not conn.closed:
            self._send(conn, HEADER.pack(HEADER_BODY, OK, 0, total))

    def _on_compare_set(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """COMPARE_SET: set the key if it holds the expected value; reply with its value."""
        key = args[0].decode()
        result = self._table.compare_set(key, args[1], args[2])
        self._key_changed(key)
        self._reply(conn, Status.OK, 0, [result])

    def _on_check(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """CHECK: 1 if every key exists, else 0."""
        self._reply(conn, Status.OK, int(not self._table.missing(a.decode() for a in args)))

    def _on_delete(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """DELETE: remove the key; 1 if it existed."""
        self._reply(conn, Status.OK, int(self._table.delete(args[0].decode())))

    def _on_num_keys(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """NUM_KEYS: the number of user keys."""
        self._reply(conn, Status.OK, self._table.num_user_keys)

    def _on_list_keys(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """LIST_KEYS: every key."""
        self._reply(conn, Status.OK, 0, [k.encode() for k in self._table.list_keys()])

    def _on_multi_set(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """MULTI_SET: store key/value pairs; acknowledged only when ``num`` asks."""
        if len(args) % 2:
            raise ProtocolError("MULTI_SET needs key/value pairs")
        table = self._table
        keys = [a.decode() for a in args[0::2]]
        for key, value in zip(keys, args[1::2], strict=True):
            table.set(key, value)
        for key in keys:
            self._key_changed(key)
        if num:
            self._reply(conn, Status.OK)

    def _on_append(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """APPEND: append to the key's value (created if missing)."""
        key = args[0].decode()
        self._table.append(key, args[1])
        self._key_changed(key)
        self._reply(conn, Status.OK)

    def _on_queue_push(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """QUEUE_PUSH: hand the value to a parked pop, or queue it."""
        self._queue_push(args[0].decode(), args[1])
        self._reply(conn, Status.OK)

    def _on_queue_pop(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """QUEUE_POP: the oldest value; QUEUE_EMPTY without a timeout, else park until a push."""
        key = args[0].decode()
        value = self._table.queue_pop(key)
        if value is not None:
            self._reply(conn, Status.OK, 0, [value])
        elif num == NO_TIMEOUT:
            self._reply(conn, Status.QUEUE_EMPTY)
        else:
            waiter = _Waiter(conn, Op.QUEUE_POP, [key])
            self._queue_waiters.setdefault(key, deque()).append(waiter)
            conn.parked.add(waiter)
            self._add_timer(waiter, num)

    def _on_queue_len(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """QUEUE_LEN: the number of values queued under the key."""
        self._reply(conn, Status.OK, self._table.queue_len(args[0].decode()))

    def _on_ping(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """PING: echo ``num``."""
        self._reply(conn, Status.OK, num)

    def _try_finish(self, waiter: _Waiter) -> bool:
        """Answer ``waiter`` if all its keys exist; otherwise park it on the first missing key."""
        data = self._table.data
        for key in waiter.keys:
            if key not in data:
                self._key_waiters.setdefault(key, {})[waiter] = None
                if waiter.parked_on is None:
                    waiter.conn.parked.add(waiter)
                waiter.parked_on = key
                return False
        waiter.done = True
        if waiter.parked_on is not None:  # it waited: no longer parked (or timed)
            waiter.conn.parked.discard(waiter)
            if waiter.timed:
                self._dead_timers += 1
        if waiter.op == Op.WAIT:
            self._reply(waiter.conn, Status.OK)
            return True
        values = [data[k] for k in waiter.keys]
        if len(values) > 1 and sum(map(len, values)) + 4 * len(values) > FRAME_LIMIT - 64:
            message = f"the reply to this MULTI_GET would exceed {FRAME_LIMIT} bytes"
            self._reply(waiter.conn, Status.ERROR, 0, [message.encode()])
        else:
            self._reply(waiter.conn, Status.OK, 0, values)
        return True

    def _finish(self, waiter: _Waiter) -> None:
        """Mark ``waiter`` answered (and no longer parked by its connection)."""
        waiter.done = True
        if waiter.parked_on is not None or waiter.op == Op.QUEUE_POP:
            waiter.conn.parked.discard(waiter)
        if waiter.timed:
            self._dead_timers += 1

    def _add_timer(self, waiter: _Waiter, timeout_ms: int) -> None:
        """Answer ``waiter`` with TIMEOUT after ``timeout_ms`` (0 waits forever, as in torch)."""
        if timeout_ms <= 0:
            return
        deadline = time.monotonic() + max(timeout_ms, 0) / 1000.0
        waiter.timed = True
        heapq.heappush(self._timers, (deadline, next(self._timer_ids), waiter))

    def _add_conn_timer(self, conn: _Connection, seconds: float) -> None:
        """Look at ``conn`` again after ``seconds``: still unauthenticated, or lingering: close."""
        deadline = time.monotonic() + seconds
        heapq.heappush(self._conn_timers, (deadline, next(self._timer_ids), conn))

    def _key_changed(self, key: str) -> None:
        waiters = self._key_waiters.pop(key, None)
        if waiters:
            for waiter in waiters:
                if not waiter.done and not waiter.conn.closed:
                    self._try_finish(waiter)

    def _queue_push(self, key: str, value: bytes) -> None:
        waiters = self._queue_waiters.get(key)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done and not waiter.conn.closed:
                self._finish(waiter)
                self._reply(waiter.conn, Status.OK, 0, [value])
                if not waiters:
                    self._queue_waiters.pop(key, None)
                return
        self._queue_waiters.pop(key, None)
        self._table.queue_push(key, value)

    # -- timeouts -----------------------------------------------------------------------------
    def _compact_timers(self) -> None:
        """Rebuild the timer heap without answered waiters once they are most of it (so that
        finished requests with long timeouts, and their connections, are freed at once)."""
        if self._dead_timers >= COMPACT_MIN and 2 * self._dead_timers >= len(self._timers):
            self._timers = [t for t in self._timers if not t[2].done]
            heapq.heapify(self._timers)
            self._dead_timers = 0

    def _next_timer_delay(self) -> float:
        timers = self._timers
        while timers and timers[0][2].done:
            heapq.heappop(timers)
            self._dead_timers = max(0, self._dead_timers - 1)
        self._compact_timers()
        due = [t[0][0] for t in (timers, self._conn_timers) if t]
        if not due:
            return -1.0
        return max(0.0, min(due) - time.monotonic())

    def _fire_timers(self) -> None:
        now = time.monotonic()
        conn_timers = self._conn_timers
        while conn_timers and conn_timers[0][0] <= now:
            self._conn_timer_due(heapq.heappop(conn_timers)[2])
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, waiter = heapq.heappop(timers)
            if waiter.done:
                self._dead_timers = max(0, self._dead_timers - 1)
                continue
            waiter.timed = False
            self._finish(waiter)
            if waiter.op == Op.QUEUE_POP:
                missing = waiter.keys
                waiting = self._queue_waiters.get(waiter.keys[0])
                if waiting is not None:
                    waiting.remove(waiter)
                    if not waiting:
                        del self._queue_waiters[waiter.keys[0]]
            else:
                missing = self._table.missing(waiter.keys)
                parked = self._key_waiters.get(waiter.parked_on)  # type: ignore[arg-type]
                if parked is not None:
                    parked.pop(waiter, None)
                    if not parked:
                        del self._key_waiters[waiter.parked_on]  # type: ignore[arg-type]
            self._reply(waiter.conn, Status.TIMEOUT, 0, [k.encode() for k in missing])

    def _conn_timer_due(self, conn: _Connection) -> None:
        """A connection's time ran out: a lingering one is closed, and so is one that has not
        authenticated yet (it is logged)."""
        if not conn.fd_open:
            return
        if conn.closed:
            self._close(conn)
        elif isinstance(conn.gate, _AuthGate):
            log.warning(
                "TCPStore server dropping client %s: it did not authenticate within %.0f s",
                conn.address,
                AUTH_TIMEOUT_S,
            )
            self._close(conn)
