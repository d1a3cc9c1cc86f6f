"""``HybridTransport``: shared-memory rings to same-host peers, TCP to the others.

The TCP full mesh is always built: it carries messages to peers on other hosts and detects the
loss of any peer (its EOF fails the calls that need that peer, same-host peers included).
Messages to a same-host peer all go through its ring, so the order of each ``(src, tag)`` stream
is kept. Both paths feed one mailbox (the TCP transport's), so receives match messages from
either. The ring is read by another thread than the TCP socket, so the loss of a same-host peer
takes effect only once its ring has been read to the end (at most ``DRAIN_S`` later): a message
it sent right before exiting still reaches its receive.

``close`` first waits (briefly) for peers to read what was written to them, so that a message
sent just before closing is not overtaken by the TCP goodbye.
"""

from __future__ import annotations

import threading
import time
import weakref

from ..core.errors import DistBackendError, fresh_error
from ..core.timeouts import Deadline
from ..store import Store
from .base import Buffer
from .mailbox import Mailbox, as_byte_view
from .mailbox_transport import MailboxTransport
from .shm.receiver import InRing, ShmReceiver
from .shm.ring import HEAD
from .shm.send import RingWriter
from .shm.setup import ShmSetup, same_host_peers
from .tcp import TCPTransport

DRAIN_S = 1.0  # how long close() waits for peers to read what was sent to them, and a lost
# same-host peer's loss waits for its ring to be read
DRAIN_POLL_S = 0.0005  # how often those waits look again


class _Resources:
    """What ``close()`` releases (apart from the transport object, so that GC can finalize it)."""

    def __init__(self, tcp: TCPTransport, mailbox: Mailbox) -> None:
        self.tcp = tcp
        self.mb = mailbox
        self.setup = ShmSetup()
        self.writers: dict[int, RingWriter] = {}
        self.receiver: ShmReceiver | None = None
        self.in_rings: dict[int, InRing] = {}
        self._draining: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def defer_close(self, peer: int, err: DistBackendError, lost: bool) -> bool:
        """The mailbox's ``defer_close`` (called with its lock held): a same-host peer that
        closed or was lost while its ring still holds unread bytes is closed only once the ring
        thread has read them (by a short-lived thread that waits for that); True then."""
        c = self.in_rings.get(peer)
        try:
            if c is None or c.tail == c.ring.hv[HEAD]:
                return False
        except ValueError:  # the ring is unmapped: the transport is closing
            return False
        drain = threading.Thread(
            target=self._drain,
            args=(c, err, lost),
            name=f"pyc10d-shm-drain-r{peer}",
            daemon=True,
        )
        with self._lock:
            if self._closed:
                return False
            self._draining.append(drain)
        drain.start()
        return True

    def _drain(self, c: InRing, err: DistBackendError, lost: bool) -> None:
        """Wait (up to DRAIN_S) until ``c`` is read to its end, then close its peer."""
        mb = self.mb
        if self.receiver is not None:
            self.receiver.wake()
        deadline = Deadline(DRAIN_S)
        try:
            while mb.error is None and c.tail != c.ring.hv[HEAD] and not deadline.expired():
                time.sleep(DRAIN_POLL_S)
        except ValueError:  # the ring was unmapped: the transport closed meanwhile
            pass
        with mb.lock:
            mb.peer_closed(c.src, err, lost, drained=True)

    def close(self) -> None:
        """Drain outgoing rings, close TCP, stop the ring thread, unmap everything; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        drain = Deadline(DRAIN_S)
        while self.mb.error is None and not drain.expired():
            if all(w.drained() for d, w in self.writers.items() if d not in self.mb.closed):
                break
            time.sleep(0.0005)
        self.tcp.close()
        with self._lock:
            draining, self._draining = self._draining, []
        for thread in draining:  # they end at once now that the mailbox has failed
            if thread is not threading.current_thread():
                thread.join(DRAIN_S)
        if self.receiver is not None:
            self.receiver.stop(self._release)
        else:
            self._release()

    def _release(self) -> None:
        for w in self.writers.values():
            w.close()
        self.setup.close()


class HybridTransport(MailboxTransport):
    """Tagged messages over shared memory (same-host peers) and TCP (the rest).

    Arguments are those of :class:`~pyc10d.transport.tcp.TCPTransport`. ``shm_peers`` selects
    the peers that use shared memory: ``"auto"`` (every same-host peer), ``"all"`` (every peer,
    and an error if one is on another host) or ``"none"``.
    """

    def __init__(
        self,
        store: Store,
        rank: int,
        world_size: int,
        deadline: Deadline,
        bind_host: str | None = None,
        advertise_host: str | None = None,
        shm_peers: str = "auto",
    ) -> None:
        if shm_peers not in ("auto", "all", "none"):
            raise ValueError(f"shm_peers must be 'auto', 'all' or 'none', got {shm_peers!r}")
        tcp = TCPTransport(store, rank, world_size, deadline, bind_host, advertise_host)
        self.rank = rank
        self.world_size = world_size
        self._tcp = tcp
        self._mb = tcp._mb
        res = self._res = _Resources(tcp, self._mb)
        self._finalizer = weakref.finalize(self, res.close)
        self._writers: list[RingWriter | None] = [None] * world_size
        try:
            peers: list[int] = []
            if shm_peers != "none" and world_size > 1:
                peers = same_host_peers(store, rank, world_size, deadline)
                if shm_peers == "all" and len(peers) != world_size - 1:
                    away = sorted(set(range(world_size)) - set(peers) - {rank})
                    raise DistBackendError(
                        f"PYC10D_TRANSPORT=shm needs every rank on one host, but ranks {away} "
                        f"are not on rank {rank}'s host"
                    )
            self.shm_peers = tuple(peers)
            if peers:
                res.setup.build(store, rank, peers, deadline)
                for dst, (ring, bell) in res.setup.outgoing.items():
                    w = RingWriter(dst, ring, bell, self._sendable(dst), self._broken)
                    self._writers[dst] = w
                    res.writers[dst] = w
                rings = [InRing(src, ring) for src, ring in sorted(res.setup.incoming.items())]
                res.in_rings = {c.src: c for c in rings}
                self._mb.defer_close = res.defer_close
                assert res.setup.doorbell is not None
                res.receiver = ShmReceiver(
                    f"pyc10d-shm-recv-r{rank}", rings, self._mb, res.setup.doorbell
                )
                res.receiver.start()
        except BaseException:
            self.close()
            raise

    def _sendable(self, dst: int):
        mb = self._mb

        def check() -> None:
            if mb.error is not None:
                raise fresh_error(mb.error)
            if mb.closed and dst in mb.closed:
                raise fresh_error(mb.closed[dst])

        return check

    def _broken(self, err: DistBackendError) -> None:
        with self._mb.lock:
            self._mb.fail(err)
        self._wake()

    def send(self, dst: int, tag: int, data: Buffer, deadline: Deadline) -> None:
        """Send ``data`` to ``dst`` under ``tag``; returns once ``data`` may be reused."""
        w = self._writers[dst] if 0 <= dst < self.world_size else None
        if w is None:
            self._tcp.send(dst, tag, data, deadline)
            return
        mb = self._mb
        if mb.error is not None:
            raise fresh_error(mb.error)
        if mb.closed and dst in mb.closed:
            raise fresh_error(mb.closed[dst])
        w.send(tag, as_byte_view(data), deadline)

    def _wake(self) -> None:
        self._tcp._wake()
        receiver = self._res.receiver
        if receiver is not None:
            receiver.wake()

    def __repr__(self) -> str:
        return (
            f"HybridTransport(rank={self.rank}, world_size={self.world_size}, "
            f"shm_peers={list(getattr(self, 'shm_peers', ()))})"
        )


__all__ = ["HybridTransport"]
