"""The producer side of a shared-memory ring: framed messages written by the sending thread.

A message is a header (tag u64, length u64, as on TCP) and its payload, streamed through the
ring in pieces, so it may be bigger than the ring. With the ring full the sender yields, then
sleeps a little longer each time, until its deadline. A send that times out before publishing
anything leaves the ring as it was; one that times out midway has corrupted the stream and
fails the transport.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from ...core.errors import DistBackendError, TransportTimeout
from ...core.timeouts import Deadline
from ..base import HEADER
from .ring import CAPACITY, CHUNK, HEAD, SLEEPING, TAIL, Ring, byte_tensor

YIELDS = 50  # full-ring polls that only yield the GIL before sleeping
MAX_SLEEP_S = 0.001


class RingWriter:
    """Sends messages to ``peer`` through ``ring``; ``doorbell`` is the peer's wake-up address.

    ``check`` raises if the transport has failed (or ``peer`` closed); ``on_broken`` is called
    with the error of a send that timed out midway.
    """

    def __init__(
        self,
        peer: int,
        ring: Ring,
        doorbell: bytes,
        check: Callable[[], None],
        on_broken: Callable[[DistBackendError], None],
    ) -> None:
        self.peer = peer
        self.ring = ring
        self.lock = threading.Lock()
        self._doorbell = doorbell
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._check = check
        self._on_broken = on_broken
        self._head = ring.hv[HEAD]
        self._tail = ring.hv[TAIL]
        self._published = self._head

    def send(self, tag: int, view: memoryview, deadline: Deadline) -> None:
        """Write one message (``view`` as its payload); returns once ``view`` may be reused."""
        with self.lock:
            start = self._head
            self._published = start
            try:
                self._put(memoryview(HEADER.pack(tag, len(view))), None, deadline)
                if len(view):
                    src_t = byte_tensor(view) if len(view) >= CHUNK else None
                    self._put(view, src_t, deadline)
            except TransportTimeout as exc:
                if self._published == start:
                    self._head = start  # nothing visible yet: forget the partial write
                    raise
                err = DistBackendError(
                    f"send to rank {self.peer} timed out midway through a message ({exc}); "
                    "the shared-memory stream is broken"
                )
                self._on_broken(err)
                raise err from exc
            self._publish()

    def ring_doorbell(self) -> None:
        """Wake the consumer (best effort: it re-checks every few milliseconds anyway)."""
        try:
            self._sock.sendto(b"!", self._doorbell)
        except OSError:
            pass

    def drained(self) -> bool:
        """True once the consumer has read everything published."""
        return self.ring.hv[TAIL] == self._head

    def close(self) -> None:
        """Close the doorbell socket (the ring is closed by its owner)."""
        self._sock.close()

    # -- internals ------------------------------------------------------------------------------
    def _publish(self) -> None:
        hv = self.ring.hv
        hv[HEAD] = self._head
        self._published = self._head
        if hv[SLEEPING]:
            self.ring_doorbell()

    def _put(self, src: memoryview, src_t, deadline: Deadline) -> None:
        ring = self.ring
        off, total = 0, len(src)
        while off < total:
            free = CAPACITY - (self._head - self._tail)
            if free == 0:
                self._tail = ring.hv[TAIL]
                free = CAPACITY - (self._head - self._tail)
                if free == 0:
                    self._wait_room(deadline)
                    continue
            pos = self._head % CAPACITY
            n = min(free, total - off, CAPACITY - pos, CHUNK)
            ring.copy_in(pos, src, src_t, off, n)
            off += n
            self._head += n
            if self._head - self._published >= CHUNK:
                self._publish()

    def _wait_room(self, deadline: Deadline) -> None:
        """Publish what was written, then wait for the consumer to free some room."""
        if self._published != self._head:
            self._publish()
        hv = self.ring.hv
        polls = 0
        pause = 0.00002
        while hv[TAIL] == self._tail:
            self._check()
            if deadline.expired():
                raise TransportTimeout(f"room to send to rank {self.peer}", deadline.seconds)
            polls += 1
            if polls < YIELDS:
                time.sleep(0)
            else:
                time.sleep(pause)
                pause = min(pause * 2, MAX_SLEEP_S)
        self._tail = hv[TAIL]
