"""The handshake of one TCP mesh connection, from both ends.

The connecting side (the higher rank) and the accepting side (the lower rank) exchange::

    [with a key: the challenge-response of pyc10d.core.auth, for "pyc10d-mesh" + group nonce]
    connector -> acceptor   HELLO  (magic, group nonce, connector's rank, world size)
    acceptor  -> connector  HELLO  (magic, group nonce, acceptor's rank, world size)
    connector -> acceptor   ACK

The acceptor takes a connection for its peer only once the ACK arrives, and the connector sends
it only after checking the acceptor's HELLO: a connection its connector gave up on (closed) can
never be taken for that peer. The group nonce is published in the store by rank 0, so strays and
other groups' connections are told apart from peers; with a key, only processes that know it get
as far as the HELLO.

The :class:`Acceptor` serves every connection to a rank's listener concurrently, on a thread of
its own, with a ``selectors`` loop: a connection that stays silent (or sends too little) only
costs its own ``HANDSHAKE_TIMEOUT_S``, never another's; one that sends a wrong HELLO is logged and
dropped. It keeps accepting until every expected peer has connected, or the setup deadline.
"""

from __future__ import annotations

import logging
import math
import os
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass

from ...core.auth import (
    HELLO_MAGIC,
    KEY_VARIABLES,
    NO_AUTH_REPLY,
    REQUIRED_MAGIC,
    AuthenticationError,
    HandshakeFailed,
    ServerHandshake,
    client_handshake,
)
from ...core.errors import DistBackendError
from ...core.timeouts import Deadline

log = logging.getLogger(__name__)

MAGIC = b"pTCP"
HELLO = struct.Struct("<4s16sII")  # magic, group nonce, sender's rank, world size
ACK = b"\x06"
MESH_CONTEXT = b"pyc10d-mesh/"  # with the group nonce: what a mesh connection authenticates for
SOCKET_BUFFER: int | None = None  # None: kernel autotuning (faster here than a fixed 4 MiB)
HANDSHAKE_TIMEOUT_S = 10.0  # the most an accepted connection may take to identify itself
EXTRA_PENDING = 64  # unidentified connections held at once, beyond one per expected peer
REQUIRED_REPLY = REQUIRED_MAGIC.ljust(HELLO.size, b"\0")  # "authenticate first", HELLO-sized
BUSY_REPLY = b"pBSY".ljust(HELLO.size, b"\0")  # "I am connecting to you": wait for my connection


def tune(sock: socket.socket) -> None:
    """No Nagle delay, keep-alive probes, and fixed buffers if asked (before connect/listen)."""
    if SOCKET_BUFFER:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class Identity:
    """What this rank shows its peers, and checks in theirs: the group nonce (from the store),
    its rank, the world size, and the key (None: no authentication)."""

    nonce: bytes
    rank: int
    world_size: int
    key: bytes | None

    def hello(self, rank: int | None = None) -> bytes:
        """The HELLO of ``rank`` (default: this rank) in this group."""
        return HELLO.pack(MAGIC, self.nonce, self.rank if rank is None else rank, self.world_size)

    @property
    def context(self) -> bytes:
        """What a mesh connection of this group authenticates for."""
        return MESH_CONTEXT + self.nonce


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    """Read exactly ``size`` bytes (the socket's timeout applies); None if the peer hung up."""
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _timeout(deadline: Deadline) -> float | None:
    remaining = deadline.remaining()
    return None if math.isinf(remaining) else max(remaining, 0.001)


class PeerConnecting(Exception):
    """The acceptor answered :data:`BUSY_REPLY`: it is connecting to this rank itself (lazy
    connection setup, where the lower rank of a pair decides), so its connection is the one."""


def shake_hands(sock: socket.socket, ident: Identity, peer: int, addr: str) -> None:
    """The connecting side's handshake over connected ``sock`` (its timeout applies).

    Raises DistBackendError when ``addr`` is not ``peer`` of this group or authentication
    failed (retrying would not help), ConnectionError when the acceptor hung up (it may have
    dropped the connection: retry), PeerConnecting when the peer connects to this rank instead
    (lazy setup only), other OSErrors as they come.
    """
    what = f"rank {peer} ({addr})"
    where = f"TCPTransport setup on rank {ident.rank}"
    if ident.key is not None:
        try:
            client_handshake(sock, ident.key, ident.context, what)
        except AuthenticationError as exc:
            raise DistBackendError(f"{where}: {exc}") from None
    sock.sendall(ident.hello())
    reply = _recv_exact(sock, HELLO.size)
    if reply is None:
        raise ConnectionError(f"{what} closed the connection during the handshake")
    if reply == BUSY_REPLY:
        raise PeerConnecting(f"{what} is connecting to rank {ident.rank} itself")
    if reply == REQUIRED_REPLY:
        raise DistBackendError(
            f"{where}: {what} requires authentication, but this rank has no key: give every "
            f"rank the same {KEY_VARIABLES}"
        )
    if reply != ident.hello(peer):
        raise DistBackendError(
            f"{where}: {addr} did not answer as rank {peer} of this group (answer: {reply!r})"
        )
    sock.sendall(ACK)


class Reject(Exception):
    """Drop this connection: ``reason`` is logged (at debug level if ``quiet``), ``reply`` sent
    first (if any)."""

    def __init__(self, reason: str, reply: bytes = b"", quiet: bool = False) -> None:
        super().__init__(reason)
        self.reply = reply
        self.quiet = quiet


class _Pending:
    """An accepted connection that has not finished its handshake."""

    __slots__ = ("address", "auth", "buf", "deadline", "peer", "sock")

    def __init__(self, sock: socket.socket, address: str, auth: ServerHandshake | None) -> None:
        self.sock = sock
        self.address = address
        self.auth = auth  # None once authenticated (or without a key)
        self.buf = bytearray()
        self.peer: int | None = None  # set once its HELLO checked out: it awaits the ACK
        self.deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S

    def needed(self) -> int:
        """Bytes of the current message still missing (never read past the handshake)."""
        if self.auth is not None:
            return self.auth.needed
        return (1 if self.peer is not None else HELLO.size) - len(self.buf)


def _address(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class Acceptor:
    """Accepts the connections of ``expected`` peers on ``listener`` until ``deadline``.

    :meth:`start` runs it on a thread; :meth:`result` waits for it and returns the sockets by
    peer rank (the peers missing from it never connected); :meth:`stop` ends it early and closes
    every socket it holds.
    """

    def __init__(
        self, listener: socket.socket, ident: Identity, expected: set[int], deadline: Deadline
    ) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._ident = ident
        self._waiting = set(expected)
        self._deadline = deadline
        self._max_pending = len(expected) + EXTRA_PENDING
        self._pending: dict[socket.socket, _Pending] = {}
        self._socks: dict[int, socket.socket] = {}
        self._error: BaseException | None = None
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopped = False
        self._thread = threading.Thread(
            target=self._run, name=f"pyc10d-tcp-accept-r{ident.rank}", daemon=True
        )

    def start(self) -> None:
        """Start accepting (on the acceptor's thread)."""
        self._thread.start()

    def result(self) -> dict[int, socket.socket]:
        """Wait until every expected peer connected or the deadline passed; the sockets."""
        self._thread.join()
        self._close_pipe()
        if self._error is not None:
            self.stop()
            raise self._error
        return self._socks

    def stop(self) -> None:
        """End accepting now and close every socket accepted so far (idempotent)."""
        self._stopped = True
        if self._thread.is_alive():
            os.write(self._stop_w, b"x")
        if self._thread.ident is not None:
            self._thread.join()
        self._close_pipe()
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()

    def _close_pipe(self) -> None:
        fds, self._stop_r, self._stop_w = (self._stop_r, self._stop_w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._stop_r, selectors.EVENT_READ)
        try:
            while self._running():
                nearest = min((p.deadline for p in self._pending.values()), default=math.inf)
                wait = min(self._deadline.remaining(), nearest - time.monotonic(), 1.0)
                for key, _ in sel.select(max(wait, 0.0)):
                    if key.fileobj is self._listener:
                        self._accept(sel)
                    elif key.fileobj == self._stop_r:
                        return
                    else:
                        self._advance(sel, key.data)
                self._expire(sel)
        except BaseException as exc:  # pragma: no cover - a bug here must reach the caller
            self._error = exc
        finally:
            for pending in list(self._pending.values()):
                self._forget(sel, pending)
            sel.close()

    def _running(self) -> bool:
        """Whether to go on accepting (a subclass may accept for as long as it lives)."""
        return bool(self._waiting) and not self._stopped and not self._deadline.expired()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(64):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: the others keep going
                log.warning("TCPTransport setup on rank %d: accept failed: %s", self.rank, exc)
                return
            sock.setblocking(False)
            tune(sock)
            key = self._ident.key
            auth = ServerHandshake(key, self._ident.context) if key is not None else None
            pending = _Pending(sock, _address(peer), auth)
            if len(self._pending) >= self._max_pending:
                self._shed(sel)
            self._pending[sock] = pending
            sel.register(sock, selectors.EVENT_READ, pending)

    @property
    def rank(self) -> int:
        """This rank."""
        return self._ident.rank

    def _shed(self, sel: selectors.BaseSelector) -> None:
        """Too many connections at once: drop the oldest one that has not identified itself."""
        unknown = [p for p in self._pending.values() if p.peer is None]
        if unknown:
            oldest = min(unknown, key=lambda p: p.deadline)
            self._drop(sel, oldest, "too many connections at once that did not identify")

    def _advance(self, sel: selectors.BaseSelector, pending: _Pending) -> None:
        """Read what ``pending`` sent (no more than its current message) and act on it."""
        try:
            data = pending.sock.recv(pending.needed())
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(sel, pending, f"reading from it failed: {exc}")
            return
        if not data:
            self._drop(sel, pending, "it closed the connection before finishing the handshake")
            return
        try:
            self._step(sel, pending, data)
        except Reject as exc:
            if exc.reply:
                try:
                    pending.sock.send(exc.reply)
                except OSError:
                    pass
            self._drop(sel, pending, str(exc), exc.quiet)

    def _step(self, sel: selectors.BaseSelector, pending: _Pending, data: bytes) -> None:
        if pending.auth is not None:
            self._authenticate(pending, data)
            return
        pending.buf += data
        if pending.needed() > 0:
            return
        if pending.peer is None:
            self._identify(sel, pending)
            return
        if bytes(pending.buf) != ACK:
            raise Reject(f"rank {pending.peer} sent {bytes(pending.buf)!r} instead of its ACK")
        self._establish(sel, pending)

    def _authenticate(self, pending: _Pending, data: bytes) -> None:
        assert pending.auth is not None
        try:
            reply = pending.auth.feed(data)
        except HandshakeFailed as exc:
            reply = REQUIRED_REPLY if exc.foreign else exc.reply
            raise Reject(f"authentication failed: {exc.reason}", reply) from None
        if reply:
            self._send(pending, reply)
        if pending.auth.done:
            pending.auth = None  # no leftover: the connector waits for the verdict

    def _identify(self, sel: selectors.BaseSelector, pending: _Pending) -> None:
        """Check a complete HELLO; answer it (the connection then awaits its ACK)."""
        hello = bytes(pending.buf)
        pending.buf.clear()
        if hello.startswith(HELLO_MAGIC):
            raise Reject(
                f"it tried to authenticate, but this rank has no key ({KEY_VARIABLES})",
                NO_AUTH_REPLY,
            )
        magic, nonce, peer, world_size = HELLO.unpack(hello)
        ident = self._ident
        if (magic, nonce, world_size) != (MAGIC, ident.nonce, ident.world_size):
            raise Reject(f"not a peer of this group (hello {hello!r})")
        for other in list(self._pending.values()):
            if other is not pending and other.peer == peer:  # an older attempt, given up
                self._drop(sel, other, f"rank {peer} connected again")
        self._admit(peer)
        pending.peer = peer
        pending.deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        self._send(pending, ident.hello())

    def _admit(self, peer: int) -> None:
        """Take the connection of ``peer`` (its HELLO checked out) or raise Reject."""
        if peer not in self._waiting:
            state = "already connected" if peer in self._socks else "not expected here"
            raise Reject(f"it says it is rank {peer}, which is {state}")

    def _establish(self, sel: selectors.BaseSelector, pending: _Pending) -> None:
        assert pending.peer is not None
        self._forget(sel, pending, close=False)
        self._established(pending.peer, pending.sock)

    def _established(self, peer: int, sock: socket.socket) -> None:
        """``peer``'s connection is confirmed (its ACK arrived): keep ``sock``."""
        self._socks[peer] = sock
        self._waiting.discard(peer)

    def _abandoned(self, peer: int) -> None:
        """``peer``'s admitted connection was dropped before its ACK (a subclass's hook)."""

    def _send(self, pending: _Pending, data: bytes) -> None:
        try:
            sent = pending.sock.send(data)
        except OSError as exc:
            raise Reject(f"answering it failed: {exc}") from None
        if sent != len(data):
            raise Reject("its socket would not take a handshake message")

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            what = "its ACK" if pending.peer is not None else "a complete handshake"
            self._drop(sel, pending, f"it sent no {what} within {HANDSHAKE_TIMEOUT_S:.0f} s")

    def _drop(
        self, sel: selectors.BaseSelector, pending: _Pending, reason: str, quiet: bool = False
    ) -> None:
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "TCPTransport setup on rank %d: dropped the connection from %s: %s",
            self.rank,
            pending.address,
            reason,
        )
        self._forget(sel, pending)

    def _forget(self, sel: selectors.BaseSelector, pending: _Pending, close: bool = True) -> None:
        if self._pending.pop(pending.sock, None) is None:
            return
        try:
            sel.unregister(pending.sock)
        except (KeyError, ValueError):
            pass
        if close:
            _drain_and_close(pending.sock)
            if pending.peer is not None:
                self._abandoned(pending.peer)


def _drain_and_close(sock: socket.socket) -> None:
    """Close ``sock`` after reading what already arrived, so that the close sends the peer a
    clean end of stream (after any answer just sent), not a reset that could discard it."""
    try:
        for _ in range(4):
            if not sock.recv(1 << 16):
                break
    except OSError:
        pass
    sock.close()


__all__ = [
    "ACK",
    "BUSY_REPLY",
    "HELLO",
    "MAGIC",
    "Acceptor",
    "Identity",
    "PeerConnecting",
    "Reject",
    "shake_hands",
    "tune",
]
