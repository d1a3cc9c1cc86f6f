"""``TCPTransport``: the :class:`~pyc10d.transport.base.Transport` of a full mesh of TCP sockets.

The constructor connects every pair of ranks (see :mod:`.setup`). Sends are written by the
calling thread, one message at a time per peer; one receiver thread per transport reads every
socket (see :mod:`.receiver`) and matches messages to receives (see :mod:`..mailbox`).

A peer that goes away without closing its transport (it exited or crashed) fails the transport:
every pending and later call raises :class:`PeerFailedError` naming it. A peer that closes its
transport says goodbye first; after that only calls that need it fail.
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
from ..mailbox_transport import MailboxTransport
from .conn import PeerConn
from .receiver import Receiver
from .setup import build_mesh

if TYPE_CHECKING:
    import socket

GOODBYE_S = 1.0  # how long close() tries to say goodbye to its peers, in all
CLOSE_SEND_WAIT_S = 5.0  # how long close() waits for a (woken) send to let go of a socket


class _Resources:
    """What ``close()`` releases, apart from the transport object so that GC can finalize it."""

    def __init__(self, rank: int, mailbox: Mailbox, fail_fds: tuple[int, int]) -> None:
        self.rank = rank
        self.mailbox = mailbox
        self.fail_r, self.fail_w = fail_fds
        self.conns: list[PeerConn] = []
        self.receiver: Receiver | None = None
        self.closed = False
        self._lock = threading.Lock()

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
    :func:`~pyc10d.transport.tcp.setup.default_advertise_host`).
    """

    def __init__(
        self,
        store: Store,
        rank: int,
        world_size: int,
        deadline: Deadline,
        bind_host: str | None = None,
        advertise_host: str | None = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"TCPTransport needs 0 <= rank < world_size, got {rank}/{world_size}")
        self.rank = rank
        self.world_size = world_size
        self._mb = Mailbox()
        res = self._res = _Resources(rank, self._mb, os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC))
        self._finalizer = weakref.finalize(self, res.close)
        self._conns: list[PeerConn | None] = [None] * world_size
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

    def send(self, dst: int, tag: int, data: Buffer, deadline: Deadline) -> None:
        """Send ``data`` to ``dst`` under ``tag``; returns once ``data`` may be reused."""
        mb = self._mb
        if mb.error is not None:
            raise fresh_error(mb.error)
        view = as_byte_view(data)
        conn = self._conns[dst] if 0 <= dst < self.world_size else None
        if conn is None:
            self._check_rank(dst, "send to")
            with mb.lock:
                r = mb.offer(dst, tag, view)  # to itself: straight into the mailbox
            if r is not None:
                r.wake()
            return
        if mb.closed and dst in mb.closed:
            raise fresh_error(mb.closed[dst])
        conn.send(tag, view, deadline)

    def _wake(self) -> None:
        receiver = self._res.receiver
        if receiver is not None:
            receiver.wake()

    def __repr__(self) -> str:
        return f"TCPTransport(rank={self.rank}, world_size={self.world_size})"


__all__ = ["TCPTransport"]
