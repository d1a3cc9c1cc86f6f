"""The consumer side of the shared-memory rings: one thread polling every incoming ring.

Each pass reads what every producer has published: a small message that lies whole in the ring is
offered to the mailbox straight from there; a bigger one streams into the posted receive's buffer
(or a new buffer when none is posted yet), chunk by chunk, so peers are served in turn. With
nothing to read the thread yields a while, then sets each ring's "sleeping" flag, looks once more
and blocks on its doorbell socket for a couple of milliseconds: a lost wake-up costs latency,
never a hang. It stops when the mailbox fails (a lost peer, or close).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

import torch

from ...core.errors import DistBackendError
from ..base import HEADER, HEADER_SIZE
from ..mailbox import CANCELLED, FAILED, FILLING, Mailbox, PendingRecv
from ..receiver_thread import ReceiverThread
from .ring import CAPACITY, CHUNK, HEAD, SLEEPING, TAIL, Ring, byte_tensor

SPIN_S = 0.0  # how long an idle thread keeps polling (yielding the GIL) before it blocks
BLOCK_MS = 2  # the longest block on the doorbell before looking again
_unpack = HEADER.unpack_from


class InRing:
    """An incoming ring from ``src`` and the state of the message being read from it."""

    __slots__ = ("body", "body_t", "dest", "drop", "got", "hdr", "pending", "ring", "size")
    __slots__ += ("src", "tag", "tail")

    def __init__(self, src: int, ring: Ring) -> None:
        self.src = src
        self.ring = ring
        self.tail = ring.hv[TAIL]
        self.hdr = bytearray()  # a header split across reads
        self.tag = 0
        self.size = 0
        self.got = 0
        self.drop = 0
        self.body: memoryview | None = None
        self.body_t: torch.Tensor | None = None
        self.dest: PendingRecv | None = None
        self.pending: bytearray | None = None


class ShmReceiver(ReceiverThread):
    """Polls ``rings`` on a daemon thread and feeds ``mailbox``; ``doorbell`` is its socket."""

    def __init__(
        self, name: str, rings: list[InRing], mailbox: Mailbox, doorbell: socket.socket
    ) -> None:
        self._rings = rings
        self._mb = mailbox
        self._sock = doorbell
        self._sock.setblocking(False)
        self._addr = doorbell.getsockname()
        self._poll = select.poll()
        self._poll.register(doorbell.fileno(), select.POLLIN)
        self._ready: list[PendingRecv] = []
        self._stopping = False
        super().__init__(name)

    def wake(self) -> None:
        """Make the thread look at its rings (and cancelled receives) now."""
        try:
            self._sock.sendto(b"!", self._addr)
        except OSError:
            pass

    def stop(self, after_exit: Callable[[], None]) -> None:
        """Stop the thread (the mailbox has failed by now), then run ``after_exit``."""
        self._stopping = True
        self._stop_thread(after_exit)

    # -- the thread ---------------------------------------------------------------------------
    def _crashed(self, exc: BaseException) -> None:
        with self._mb.lock:
            self._mb.fail(DistBackendError(f"shared-memory receiver crashed: {exc!r}"))

    def _exiting(self) -> None:
        self._fail_filling()

    def _loop(self) -> None:
        mb = self._mb
        rings = self._rings
        ready = self._ready
        idle_since = time.monotonic()
        while not self._stopping and mb.error is None:
            busy = False
            for c in rings:
                if c.dest is not None and c.dest.cancelled:
                    self._cancel(c)
                if c.ring.hv[HEAD] != c.tail:
                    self._read(c)
                    busy = True
            if ready:
                for r in ready:
                    r.wake()
                ready.clear()
            if busy:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since < SPIN_S:
                time.sleep(0)
            else:
                self._block()
                idle_since = time.monotonic()

    def _block(self) -> None:
        """Sleep on the doorbell unless a producer published meanwhile."""
        rings = self._rings
        for c in rings:
            c.ring.hv[SLEEPING] = 1
        try:
            idle = all(c.ring.hv[HEAD] == c.tail for c in rings)
            if idle and self._poll.poll(BLOCK_MS):
                try:
                    while self._sock.recv(64):
                        pass
                except OSError:
                    pass
        finally:
            for c in rings:
                c.ring.hv[SLEEPING] = 0

    def _cancel(self, c: InRing) -> None:
        """Let go of a timed-out receive being filled; drop the rest of its message."""
        with self._mb.lock:
            r = c.dest
            if r is not None and r.state == FILLING:
                r.finish(CANCELLED)
                c.dest = None
                c.body = c.body_t = None
                c.drop = c.size - c.got

    def _fail_filling(self) -> None:
        """Fail receives still being filled (the thread is exiting)."""
        mb = self._mb
        with mb.lock:
            err = mb.error or DistBackendError("shared-memory transport stopped")
            for c in self._rings:
                r = c.dest
                if r is not None and r.state == FILLING:
                    r.finish(FAILED, err)
                c.dest = None
                c.body = c.body_t = None
        for r in self._ready:
            r.wake()
        self._ready.clear()

    # -- reading ------------------------------------------------------------------------------
    def _read(self, c: InRing) -> None:
        """Consume what ``c``'s producer has published, publishing the tail as it goes."""
        ring = c.ring
        hv = ring.hv
        data = ring.data
        avail = hv[HEAD] - c.tail
        while avail:
            pos = c.tail % CAPACITY
            contiguous = min(avail, CAPACITY - pos)
            if c.body is not None:
                n = min(contiguous, c.size - c.got, CHUNK)
                ring.copy_out(pos, c.body, c.body_t, c.got, n)
                c.got += n
                if c.got == c.size:
                    self._complete(c)
            elif c.drop:
                n = min(contiguous, c.drop)
                c.drop -= n
            elif not c.hdr and contiguous >= HEADER_SIZE:
                tag, size = _unpack(data, pos)
                if size <= contiguous - HEADER_SIZE and size < CHUNK:  # whole: straight in
                    self._offer(c.src, tag, data[pos + HEADER_SIZE : pos + HEADER_SIZE + size])
                    n = HEADER_SIZE + size
                else:
                    n = HEADER_SIZE
                    self._start(c, tag, size)
            else:
                n = min(contiguous, HEADER_SIZE - len(c.hdr))
                c.hdr += data[pos : pos + n]
                if len(c.hdr) == HEADER_SIZE:
                    tag, size = _unpack(c.hdr, 0)
                    c.hdr = bytearray()
                    self._start(c, tag, size)
            c.tail += n
            avail -= n
            if n >= CHUNK:
                hv[TAIL] = c.tail
            if not avail:
                hv[TAIL] = c.tail
                avail = hv[HEAD] - c.tail

    def _offer(self, src: int, tag: int, payload: memoryview) -> None:
        with self._mb.lock:
            r = self._mb.offer(src, tag, payload)
        if r is not None:
            self._ready.append(r)

    def _start(self, c: InRing, tag: int, size: int) -> None:
        """Begin a ``size``-byte payload: into a posted receive, a new buffer, or dropped."""
        if size == 0:
            self._offer(c.src, tag, memoryview(b""))
            return
        view, dest, pending, failed = self._mb.accept(c.src, tag, size)
        if failed is not None:
            self._ready.append(failed)
        if dest is not None:
            c.dest = dest
        if pending is not None:
            c.pending = pending
        if view is None:
            c.drop = size
            return
        c.body = view
        c.body_t = byte_tensor(view) if size >= CHUNK else None
        c.tag = tag
        c.size = size
        c.got = 0

    def _complete(self, c: InRing) -> None:
        """The payload being streamed has fully arrived: finish its receive or buffer it."""
        r = self._mb.stream_done(c.src, c.tag, c.dest, c.pending)
        if r is not None:
            self._ready.append(r)
        c.body = c.body_t = None
        c.dest = None
        c.pending = None
