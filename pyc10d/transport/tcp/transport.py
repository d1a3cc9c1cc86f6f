"""``TCPTransport``: the :class:`~pyc10d.transport.base.Transport` of a full mesh of TCP sockets.

The constructor connects every pair of ranks (see :mod:`.setup`). Sends are written by the
calling thread, one message at a time per peer; one receiver thread per transport reads every
socket (see :mod:`.receiver`) and matches messages to receives (see :mod:`..mailbox`).

A peer that goes away without closing its transport (it exited or crashed) fails only the calls
that need it, with :class:`PeerFailedError` naming it: what it sent before is still delivered,
and so are the other ranks' messages (a rank that exits right after a collective returned does
not fail its peers' part of it). From then on, a call failing because any peer is gone names
that lost rank. A peer that closes its transport says goodbye first; after that only calls that
need it fail.

With ``lazy=True`` the constructor connects nothing: the first send to a peer connects the pair
(see :mod:`.lazy`), and :meth:`TCPTransport.connected_peers` tells which pairs are connected.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING

from ...core.errors import DistBackendError, fresh_error
from ...core.timeouts import Deadline
from ...store import Store
from ..base import Buffer
from ..mailbox import Mailbox, as_byte_view
from ..mailbox_transport import MailboxTransport, writable_view
from .conn import PeerConn
from .lazy import LazyMesh
from .receiver import Receiver
from .setup import build_mesh

if TYPE_CHECKING:
    import socket

GOODBYE_S = 1.0  # how long close() tries to say goodbye to its peers, in all
CLOSE_SEND_WAIT_S = 5.0  # how long close() waits for a (woken) send to let go of a socket


class _Resources:
    """What ``close()`` releases, apart from the transport object so that GC can finalize it."""

    def __init__(
        self, rank: int, world_size: int, mailbox: Mailbox, fail_fds: tuple[int, int]
    ) -> None:
        self.rank = rank
        self.mailbox = mailbox
        self.fail_r, self.fail_w = fail_fds
        self.conns: list[PeerConn] = []  # the receiver reads this very list
        self.by_peer: list[PeerConn | None] = [None] * world_size
        self.receiver: Receiver | None = None
        self.mesh: LazyMesh | None = None
        self.closed = False
        self._lock = threading.Lock()

    def attach(self, peer: int, sock: socket.socket) -> PeerConn:
        """Make ``sock`` (connected, confirmed) the connection to ``peer`` and have the receiver
        read it; once the transport is closed, close ``sock`` and raise its error."""
        with self._lock:
            if self.closed or self.receiver is None:
                sock.close()
                raise self.failure()
            sock.setblocking(False)
            conn = PeerConn(peer, sock, self.fail_r, self.failure)
            with self.mailbox.lock:
                self.conns.append(conn)
            self.by_peer[peer] = conn
            self.receiver.add(conn)
        return conn

    def lost(self, peer: int, err: DistBackendError) -> None:
        """``peer`` has left before it was ever connected: calls that need it fail with ``err``."""
        with self.mailbox.lock:
            if peer not in self.mailbox.closed:
                self.mailbox.peer_closed(peer, err)

    def signal_failure(self) -> None:
        """Wake every blocked sender (the failure pipe stays readable from now on)."""
        with self._lock:
            if self.fail_w < 0:
                return
            try:
                os.write(self.fail_w, b"!")
            except OSError:
                pass

    def failure(self) -> DistBackendError:
        """A fresh copy of the error that failed or closed the transport."""
        err = self.mailbox.error
        return fresh_error(err if err is not None else DistBackendError("transport failed"))

    def close(self) -> None:
        """Say goodbye, stop the receiver, close every socket; idempotent."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        err = DistBackendError(f"TCPTransport of rank {self.rank} was closed")
        mb = self.mailbox
        with mb.lock:
            if mb.error is None:
                mb.error = err
        self.signal_failure()
        if self.mesh is not None:
            self.mesh.close()
        goodbye = Deadline(GOODBYE_S)
        for conn in self.conns:
            conn.say_goodbye(deadline_left(goodbye))
        if self.receiver is not None:
            self.receiver.stop(err, self._release)
        else:
            self._release()

    def _release(self) -> None:
        with self.mailbox.lock:
            self.mailbox.fail(self.mailbox.error or DistBackendError("transport closed"))
        for conn in self.conns:
            conn.close(CLOSE_SEND_WAIT_S)
        if self.receiver is not None:
            self.receiver.close_fds()
        with self._lock:
            fds, self.fail_r, self.fail_w = (self.fail_r, self.fail_w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def deadline_left(deadline: Deadline) -> float:
    """Seconds left of ``deadline``, at least a millisecond."""
    return max(deadline.remaining(), 0.001)


class TCPTransport(MailboxTransport):
    """Tagged messages between ``world_size`` ranks over a full mesh of TCP connections.

    Setup goes through ``store`` (already namespaced for this group) and must finish by
    ``deadline`` (``Deadline(0)``: no limit). Listens on ``bind_host`` (default: all IPv4
    interfaces) and tells peers to connect to ``advertise_host`` (default: see
    :func:`~pyc10d.transport.tcp.setup.default_advertise_host`). With ``lazy``, nothing is
    connected here: each pair connects on its first send (see :mod:`.lazy`).
    """

    def __init__(
        self,
        store: Store,
        rank: int,
        world_size: int,
        deadline: Deadline,
        bind_host: str | None = None,
        advertise_host: str | None = None,
        lazy: bool = False,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"TCPTransport needs 0 <= rank < world_size, got {rank}/{world_size}")
        self.rank = rank
        self.world_size = world_size
        self._mb = Mailbox()
        pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        res = self._res = _Resources(rank, world_size, self._mb, pipe)
        self._finalizer = weakref.finalize(self, res.close)
        self._conns = res.by_peer
        self._mesh: LazyMesh | None = None
        if lazy:
            self._start_lazy(store, bind_host, advertise_host)
            return
        socks: dict[int, socket.socket] = {}
        try:
            socks = build_mesh(store, rank, world_size, deadline, bind_host, advertise_host)
            for peer, sock in sorted(socks.items()):
                sock.setblocking(False)
                conn = PeerConn(peer, sock, res.fail_r, res.failure)
                self._conns[peer] = conn
                res.conns.append(conn)
            res.receiver = Receiver(
                f"pyc10d-tcp-recv-r{rank}", res.conns, self._mb, res.signal_failure
            )
            res.receiver.start()
        except BaseException:
            for peer, sock in socks.items():
                if self._conns[peer] is None:
                    sock.close()
            self.close()
            raise

    def _start_lazy(self, store: Store, bind_host: str | None, advertise_host: str | None) -> None:
        """Listen and publish this rank's address; start the receiver with no connection."""
        res, mb = self._res, self._mb
        try:
            res.receiver = Receiver(
                f"pyc10d-tcp-recv-r{self.rank}", res.conns, self._mb, res.signal_failure
            )
            res.receiver.start()
            res.mesh = self._mesh = LazyMesh(
                store,
                self.rank,
                self.world_size,
                bind_host,
                advertise_host,
                res.attach,
                lambda: mb.error,  # not self: the finalizer must be able to run
                res.lost,
            )
        except BaseException:
            self.close()
            raise

    def send(self, dst: int, tag: int, data: Buffer, deadline: Deadline) -> None:
        """Send ``data`` to ``dst`` under ``tag``; returns once ``data`` may be reused."""
        mb = self._mb
        if mb.error is not None:
            raise fresh_error(mb.error)
        view = as_byte_view(data)
        conn = self._conns[dst] if 0 <= dst < self.world_size else None
        if conn is None:
            self._check_rank(dst, "send to")
            if dst != self.rank and self._mesh is not None:
                if mb.closed and dst in mb.closed:
                    raise fresh_error(mb.closed[dst])
                self._mesh.connect(dst, deadline).send(tag, view, deadline)
                return
            with mb.lock:
                r = mb.offer(dst, tag, view)  # to itself: straight into the mailbox
            if r is not None:
                r.wake()
            return
        if mb.closed and dst in mb.closed:
            raise fresh_error(mb.closed[dst])
        conn.send(tag, view, deadline)

    def send_recv(
        self,
        dst: int,
        send_tag: int,
        data: Buffer,
        src: int,
        recv_tag: int,
        out: memoryview,
        deadline: Deadline,
    ) -> None:
        """Send ``data`` to ``dst`` under ``send_tag`` and receive the next ``(src, recv_tag)``
        message into ``out`` (its size must be ``len(out)``), on the calling thread.

        The receive is posted before the send, so the reply streams straight into ``out`` (no
        buffering, no copy) and no other thread is needed to post it. If the send fails, the
        receive is still waited for (it must not fill ``out`` after this returns); its error, if
        any, wins, as if both ran at once.
        """
        self._check_rank(dst, "send to")
        self._check_rank(src, "recv from")
        view = writable_view(out)
        srcs = (src,)
        mb = self._mb
        posted = mb.post(srcs, recv_tag, view)
        try:
            self.send(dst, send_tag, data, deadline)
        finally:
            mb.collect(posted, srcs, recv_tag, view, deadline, self._wake)

    def connect_all(self, deadline: Deadline) -> None:
        """Connect to every peer not connected yet, by ``deadline`` (a lazy transport; an
        eager one already is): the loss of any of them is then noticed at once."""
        mb = self._mb
        if self._mesh is None:
            return
        for peer in range(self.world_size):
            if peer != self.rank and self._conns[peer] is None:
                if mb.error is not None:
                    raise fresh_error(mb.error)
                if mb.closed and peer in mb.closed:
                    raise fresh_error(mb.closed[peer])
                self._mesh.connect(peer, deadline)

    def connected_peers(self) -> list[int]:
        """The ranks this rank has a connection to (every other rank unless lazy)."""
        return [c.rank for c in self._conns if c is not None]

    def _wake(self) -> None:
        receiver = self._res.receiver
        if receiver is not None:
            receiver.wake()

    def __repr__(self) -> str:
        return f"TCPTransport(rank={self.rank}, world_size={self.world_size})"


__all__ = ["TCPTransport"]
