"""The TCPStore server: one background thread, a ``selectors`` event loop, any number of clients.

Blocking requests (GET, WAIT, MULTI_GET, blocking QUEUE_POP) never block the loop: they park a
``Waiter`` that is answered when its keys appear or its deadline passes. A connection that sends
an invalid frame, or closes mid-frame, is dropped; everyone else keeps being served.
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
import threading
import time
from collections import deque
from collections.abc import Callable

from ...core.errors import DistNetworkError
from ..table import KeyValueTable
from .protocol import NO_TIMEOUT, Op, ProtocolError, Status, decode, encode, frame_size

log = logging.getLogger(__name__)

RECV_SIZE = 1 << 16
SPIN_POLLS = 16  # zero-timeout polls after activity before the loop blocks (~30 µs)
SPIN_PROBE = 8  # with spinning switched off, try it again after this many blocking waits

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

    def poll(self, timeout: float | None) -> list[tuple[int, int]]:
        """Ready ``(fd, mask)`` pairs, waiting up to ``timeout`` seconds (None: forever)."""
        if self._epoll is not None:
            return self._epoll.poll(-1 if timeout is None else timeout)
        return self._impl.poll(None if timeout is None else timeout * 1000)

    def close(self) -> None:
        """Release the epoll descriptor."""
        if self._epoll is not None:
            self._epoll.close()


def _spin_before_blocking(spin: int, idle_polls: int, blocked: int) -> tuple[int, int]:
    """The event loop's ``(spin, blocked)`` as it is about to block in ``poll``.

    A spin that found nothing is halved; once spinning is off, it is probed again after
    ``SPIN_PROBE`` blocking waits.
    """
    if idle_polls == spin and spin:
        spin //= 2
    blocked += 1
    if not spin and blocked >= SPIN_PROBE:
        spin, blocked = SPIN_PROBE, 0
    return spin, blocked


class _Connection:
    """One client's socket and buffers."""

    __slots__ = ("closed", "inbuf", "needed", "outbuf", "peer", "sock")

    def __init__(self, sock: socket.socket, peer: object) -> None:
        self.sock = sock
        self.peer = peer
        self.inbuf = bytearray()  # the start of a frame that spans reads
        self.needed = 0  # bytes ``inbuf`` must reach before it holds a whole frame
        self.outbuf = bytearray()
        self.closed = False


_Handler = Callable[[_Connection, int, list[bytes]], None]  # (conn, num, args) of a request


class _Waiter:
    """A parked blocking request."""

    __slots__ = ("conn", "done", "keys", "op", "parked_on")

    def __init__(self, conn: _Connection, op: int, keys: list[str]) -> None:
        self.conn = conn
        self.op = op
        self.keys = keys
        self.done = False
        self.parked_on: str | None = None


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


class StoreServer:
    """Serves a :class:`KeyValueTable` to TCPStore clients from a daemon thread."""

    def __init__(self, port: int = 0, listen_fd: int | None = None) -> None:
        if listen_fd is not None:
            self._listener = socket.socket(fileno=listen_fd)
        else:
            self._listener = _listen_socket(port)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._table = KeyValueTable()
        self._key_waiters: dict[str, list[_Waiter]] = {}
        self._queue_waiters: dict[str, deque[_Waiter]] = {}
        self._timers: list[tuple[float, int, _Waiter]] = []
        self._timer_ids = itertools.count()
        self._connections: set[_Connection] = set()
        self._poller = _Poller()
        self._by_fd: dict[int, _Connection] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stopping = False
        self._handlers = self._request_handlers()
        self._thread = threading.Thread(
            target=self._run, name=f"pyc10d-store-{self.port}", daemon=True
        )
        self._thread.start()

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
        """The event loop: serve the ready sockets and the due timers until :meth:`stop`."""
        poller = self._poller
        listen_fd, wake_fd = self._listener.fileno(), self._wake_r
        poller.register(listen_fd, READ)
        poller.register(wake_fd, READ)
        dispatch = self._dispatch  # bound once: no method object per loop iteration
        spin = SPIN_POLLS  # adapts: grows back when spinning finds work, halves when it does not
        idle_polls = 0
        blocked = 0
        try:
            while not self._stopping:
                # after activity, re-poll without sleeping for a moment: the next request of a
                # busy client usually arrives within microseconds, and a wake-up costs more
                if idle_polls < spin:
                    events = poller.poll(0.0)
                else:
                    spin, blocked = _spin_before_blocking(spin, idle_polls, blocked)
                    events = poller.poll(self._next_timer_delay())
                if not events:
                    idle_polls += 1
                else:
                    if idle_polls:
                        if idle_polls < spin:  # the spin caught this request: keep spinning
                            spin = SPIN_POLLS
                        idle_polls = 0
                    dispatch(events, listen_fd, wake_fd)
                if self._timers:
                    self._fire_timers()
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
                if mask & WRITE and not conn.closed:
                    self._flush(conn)
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

    # -- sockets ------------------------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving the others
                log.warning("TCPStore server accept failed: %s", exc)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock, peer)
            self._connections.add(conn)
            self._by_fd[sock.fileno()] = conn
            self._poller.register(sock.fileno(), READ)

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._connections.discard(conn)
        fd = conn.sock.fileno()
        self._by_fd.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._poller.unregister(fd)
        conn.sock.close()

    def _on_readable(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)  # a frame cut off mid-way is dropped with the connection
            return
        if conn.inbuf:  # finishing a frame that spans reads: gather until it is complete
            conn.inbuf += data
            if len(conn.inbuf) < conn.needed:
                return
            data = bytes(conn.inbuf)
            conn.inbuf.clear()
        offset = 0
        try:
            while not conn.closed:
                frame = decode(data, offset)
                if frame is None:
                    break
                offset, op, num, args = frame
                self._handle(conn, op, num, args)
        except (ProtocolError, UnicodeDecodeError, ValueError, IndexError) as exc:
            log.warning("TCPStore server dropping client %s: %s", conn.peer, exc)
            self._close(conn)
            return
        if offset < len(data):
            conn.inbuf += data[offset:]
            conn.needed = frame_size(conn.inbuf)

    def _reply(self, conn: _Connection, status: int, num: int = 0, args=()) -> None:
        if conn.closed:
            return
        frame = encode(status, num, args)
        if conn.outbuf:
            conn.outbuf += frame
            return
        try:
            sent = conn.sock.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        if sent < len(frame):
            conn.outbuf += frame[sent:]
            self._poller.modify(conn.sock.fileno(), READ | WRITE)

    def _flush(self, conn: _Connection) -> None:
        try:
            sent = conn.sock.send(conn.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        del conn.outbuf[:sent]
        if not conn.outbuf:
            self._poller.modify(conn.sock.fileno(), READ)

    # -- requests -----------------------------------------------------------------------------
    def _handle(self, conn: _Connection, op: int, num: int, args: list[bytes]) -> None:
        """Serve one request with the handler of its opcode."""
        handler = self._handlers.get(op)
        if handler is None:
            raise ProtocolError(f"unknown opcode {op}")
        handler(conn, num, args)

    def _request_handlers(self) -> dict[int, _Handler]:
        """The handler of each opcode, as bound methods keyed by plain ``int`` (fast lookups)."""
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
        return {int(op): handler for op, handler in handlers.items()}

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
        self._key_changed(key)
        if num:  # acknowledged only when asked: clients do not wait for SET (as in torch)
            self._reply(conn, Status.OK)

    def _on_add(self, conn: _Connection, num: int, args: list[bytes]) -> None:
        """ADD: add ``num`` to the key's integer value; reply with the total."""
        key = args[0].decode()
        try:
            total = self._table.add(key, num)
        except ValueError as exc:
            self._reply(conn, Status.VALUE_ERROR, 0, [str(exc).encode()])
            return
        self._key_changed(key)
        self._reply(conn, Status.OK, total)

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
                self._key_waiters.setdefault(key, []).append(waiter)
                waiter.parked_on = key
                return False
        waiter.done = True
        if waiter.op == Op.WAIT:
            self._reply(waiter.conn, Status.OK)
        else:
            self._reply(waiter.conn, Status.OK, 0, [data[k] for k in waiter.keys])
        return True

    def _add_timer(self, waiter: _Waiter, timeout_ms: int) -> None:
        """Answer ``waiter`` with TIMEOUT after ``timeout_ms`` (0 waits forever, as in torch)."""
        if timeout_ms <= 0:
            return
        deadline = time.monotonic() + max(timeout_ms, 0) / 1000.0
        heapq.heappush(self._timers, (deadline, next(self._timer_ids), waiter))

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
                waiter.done = True
                self._reply(waiter.conn, Status.OK, 0, [value])
                return
        self._queue_waiters.pop(key, None)
        self._table.queue_push(key, value)

    # -- timeouts -----------------------------------------------------------------------------
    def _next_timer_delay(self) -> float | None:
        timers = self._timers
        while timers and (timers[0][2].done or timers[0][2].conn.closed):
            heapq.heappop(timers)
        if not timers:
            return None
        return max(0.0, timers[0][0] - time.monotonic())

    def _fire_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, waiter = heapq.heappop(timers)
            if waiter.done or waiter.conn.closed:
                continue
            waiter.done = True
            if waiter.op == Op.QUEUE_POP:
                missing = waiter.keys
            else:
                missing = self._table.missing(waiter.keys)
                parked = self._key_waiters.get(waiter.parked_on)
                if parked is not None:
                    parked.remove(waiter)
                    if not parked:
                        del self._key_waiters[waiter.parked_on]
            self._reply(waiter.conn, Status.TIMEOUT, 0, [k.encode() for k in missing])
