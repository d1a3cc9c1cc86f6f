"""Matching of incoming messages to posted receives, independent of how bytes travel.

A message from ``src`` under ``tag`` completes the oldest posted receive for ``tag`` that accepts
``src``; with none posted it is buffered ("unexpected"), FIFO per ``(src, tag)``. A transport
feeds messages in (whole, or claimed first and filled later) and its callers take them out with
:meth:`Mailbox.receive`. Every state change happens under :attr:`Mailbox.lock`.
"""

from __future__ import annotations

import _thread
import math
import threading
import time
from collections import deque
from collections.abc import Callable

from ..core.errors import DistBackendError, TransportTimeout, fresh_error
from ..core.tags import is_p2p, tag_seq
from ..core.timeouts import Deadline
from .base import Buffer

POSTED, FILLING, DONE, FAILED, CANCELLED = range(5)
DISCARD_MEMORY = 1024  # how many discarded collective sequence numbers are remembered
CANCEL_GRACE_S = 30.0  # the most a timed-out receive waits for its filler to let go of ``out``

Payload = bytes | bytearray | memoryview


def as_byte_view(buf: Buffer) -> memoryview:
    """``buf`` as a flat memoryview of unsigned bytes (no copy; must be C-contiguous)."""
    view = buf if type(buf) is memoryview else memoryview(buf)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


def lock_timeout(seconds: float) -> float:
    """A ``Lock.acquire`` timeout for ``seconds`` left: -1 (forever) for an infinite wait."""
    return -1 if math.isinf(seconds) else seconds


def size_error(src: int, tag: int, expected: int, got: int) -> DistBackendError:
    """The error of a receive whose buffer does not fit the message it matched."""
    return DistBackendError(
        f"size mismatch for message {tag} from rank {src}: "
        f"expected {expected} bytes, got {got} bytes"
    )


class PendingRecv:
    """A posted receive: the sources it accepts, where its payload goes, and how it ended.

    ``out`` is None for a receive of any size (the payload lands in ``data``). ``done`` is a
    lock held until the receive ends; its filler sets ``state`` and releases it.
    """

    __slots__ = ("cancelled", "data", "done", "error", "out", "src", "srcs", "state")

    def __init__(self, srcs: tuple[int, ...], out: memoryview | None) -> None:
        self.srcs = srcs
        self.out = out
        self.done = _thread.allocate_lock()
        self.done.acquire()
        self.state = POSTED
        self.src = -1
        self.data: Payload | None = None
        self.error: DistBackendError | None = None
        self.cancelled = False

    def settle(self, state: int, error: DistBackendError | None = None) -> None:
        """Record the end of the receive (DONE, FAILED or CANCELLED); ``wake`` must follow."""
        self.state = state
        self.error = error

    def wake(self) -> None:
        """Wake the receive's waiter (once, after ``settle``)."""
        self.done.release()

    def finish(self, state: int, error: DistBackendError | None = None) -> None:
        """``settle`` and ``wake`` at once."""
        self.state = state
        self.error = error
        self.done.release()


GRACE_MIN_BYTES = 1 << 20  # unexpected payloads from this size wait briefly for their receive


class Mailbox:
    """Posted receives and buffered messages of one transport endpoint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._receive_posted = threading.Condition(self.lock)  # for accept()'s grace wait
        self._accept_waiting = 0
        self.error: DistBackendError | None = None
        self.closed: dict[int, DistBackendError] = {}  # peers that said goodbye
        self._posted: dict[int, list[PendingRecv]] = {}
        self._unexpected: dict[tuple[int, int], deque[tuple[int, Payload]]] = {}
        self._arrivals = 0
        self._discarded: set[int] = set()
        self._discard_order: deque[int] = deque()

    # -- feeding (the caller holds ``lock``) ------------------------------------------------
    def match(self, src: int, tag: int) -> PendingRecv | None:
        """Remove and return the oldest posted receive for ``tag`` accepting ``src``, if any."""
        posted = self._posted.get(tag)
        if posted:
            for i, r in enumerate(posted):
                if src in r.srcs:
                    del posted[i]
                    if not posted:
                        del self._posted[tag]
                    return r
        return None

    def deliver(self, r: PendingRecv, src: int, tag: int, payload: Payload) -> None:
        """Settle ``r`` with a whole message ``payload`` (copied into ``r.out``); wake it next."""
        r.src = src
        out = r.out
        if out is None:
            r.data = payload if type(payload) is not memoryview else bytes(payload)
        elif out.nbytes != len(payload):
            r.settle(FAILED, size_error(src, tag, out.nbytes, len(payload)))
            return
        else:
            out[:] = payload
        r.state = DONE

    def claim(self, r: PendingRecv, src: int, tag: int, size: int) -> memoryview | None:
        """Mark ``r`` as being filled by a ``size``-byte message; return the buffer to fill.

        Returns None (and settles ``r`` as failed: wake it) when ``r.out`` has another size; the
        filler then drops the payload.
        """
        r.src = src
        if r.out is None:
            buf = bytearray(size)
            r.data = buf
            view = memoryview(buf)
        elif r.out.nbytes != size:
            r.settle(FAILED, size_error(src, tag, r.out.nbytes, size))
            return None
        else:
            view = r.out
        r.state = FILLING
        return view

    def accept(
        self, src: int, tag: int, size: int, grace: float = 0.0
    ) -> tuple[memoryview | None, PendingRecv | None, bytearray | None, PendingRecv | None]:
        """Decide where an incoming ``size``-byte payload goes, for a streaming receiver.

        Returns ``(view, dest, pending, failed)``: ``view`` is the memory to fill (None: drop
        the payload), ``dest`` the posted receive it fills, ``pending`` the new buffer of an
        unexpected message, and ``failed`` a receive settled by a size mismatch (wake it).

        A payload of at least GRACE_MIN_BYTES with no receive posted yet waits up to ``grace``
        seconds for one, so that it lands in place instead of in a new buffer to be copied
        later (the usual case: the receiver is about to post it). The wait is bounded, so a
        receiver that needs other messages first is only delayed, never deadlocked.
        """
        with self.lock:
            r = self.match(src, tag)
            if r is None and grace > 0 and size >= GRACE_MIN_BYTES and self.error is None:
                r = self._await_receive(src, tag, grace)
            if r is not None:
                view = self.claim(r, src, tag, size)
                if view is None:
                    return None, None, None, r
                return view, r, None, None
            if self.is_discarded(tag):
                return None, None, None, None
        pending = bytearray(size)
        return memoryview(pending), None, pending, None

    def _await_receive(self, src: int, tag: int, grace: float) -> PendingRecv | None:
        """Wait (lock held) up to ``grace`` seconds for a receive matching ``(src, tag)``."""
        until = time.monotonic() + grace
        self._accept_waiting += 1
        try:
            while True:
                remaining = until - time.monotonic()
                if remaining <= 0 or self.error is not None or self.is_discarded(tag):
                    return None
                self._receive_posted.wait(remaining)
                r = self.match(src, tag)
                if r is not None:
                    return r
        finally:
            self._accept_waiting -= 1

    def stream_done(
        self, src: int, tag: int, dest: PendingRecv | None, pending: bytearray | None
    ) -> PendingRecv | None:
        """A streamed payload fully arrived (in ``dest``'s buffer, or the ``pending`` buffer of an
        unexpected message): settle ``dest`` or deliver/buffer ``pending``; returns the receive
        to wake, if any."""
        with self.lock:
            if dest is not None:
                dest.state = DONE
                return dest
            return self.offer(src, tag, pending)

    def is_discarded(self, tag: int) -> bool:
        """True if ``tag`` is a collective tag whose sequence number was discarded."""
        return not is_p2p(tag) and tag_seq(tag) in self._discarded

    def store(self, src: int, tag: int, payload: Payload) -> None:
        """Buffer an unexpected message (unless its collective was discarded)."""
        if self._discarded and self.is_discarded(tag):
            return
        if type(payload) is memoryview:
            payload = bytes(payload)
        self._arrivals += 1
        queue = self._unexpected.get((src, tag))
        if queue is None:
            queue = self._unexpected[(src, tag)] = deque()
        queue.append((self._arrivals, payload))

    def offer(self, src: int, tag: int, payload: Payload) -> PendingRecv | None:
        """Deliver a whole message to a matching posted receive (returned: wake it), or buffer
        it (returns None)."""
        r = self.match(src, tag)
        if r is not None:
            self.deliver(r, src, tag, payload)
        else:
            self.store(src, tag, payload)
        return r

    def fail(self, err: DistBackendError) -> None:
        """Record ``err`` (the first one sticks) and fail every posted receive with it."""
        if self.error is None:
            self.error = err
        if self._accept_waiting:
            self._receive_posted.notify_all()
        for posted in self._posted.values():
            for r in posted:
                r.finish(FAILED, self.error)
        self._posted.clear()

    def peer_closed(self, peer: int, err: DistBackendError) -> None:
        """Note that ``peer`` closed cleanly; fail receives that can only be served by it."""
        self.closed[peer] = err
        for tag in list(self._posted):
            keep = []
            for r in self._posted[tag]:
                if all(s in self.closed for s in r.srcs):
                    r.finish(FAILED, self.closed[r.srcs[0]])
                else:
                    keep.append(r)
            if keep:
                self._posted[tag] = keep
            else:
                del self._posted[tag]

    def has_posted(self, tag: int) -> bool:
        """True if a receive for ``tag`` is posted and unmatched (for tests and diagnostics)."""
        with self.lock:
            return bool(self._posted.get(tag))

    # -- the caller's side ----------------------------------------------------------------------
    def discard(self, seq: int) -> None:
        """Drop buffered messages of collective ``seq`` and any that arrive later."""
        with self.lock:
            if seq not in self._discarded:
                self._discarded.add(seq)
                self._discard_order.append(seq)
                if len(self._discard_order) > DISCARD_MEMORY:
                    self._discarded.discard(self._discard_order.popleft())
            doomed = [k for k in self._unexpected if self.is_discarded(k[1])]
            for key in doomed:
                del self._unexpected[key]

    def receive(
        self,
        srcs: tuple[int, ...],
        tag: int,
        out: memoryview | None,
        deadline: Deadline,
        on_cancel: Callable[[], None],
    ) -> tuple[int, Payload | None]:
        """Take the next ``tag`` message from one of ``srcs``: into ``out``, or returned whole.

        Waits until ``deadline``; ``on_cancel`` is called when a receive that is being filled
        times out (the filler must then drop the rest and finish it as CANCELLED).
        """
        with self.lock:
            if self.error is not None:
                raise fresh_error(self.error)
            hit = self._take(srcs, tag)
            if hit is None:
                self._check_closed(srcs)
                r = PendingRecv(srcs, out)
                posted = self._posted.get(tag)
                if posted is None:
                    self._posted[tag] = [r]
                else:
                    posted.append(r)
                if self._accept_waiting:
                    self._receive_posted.notify_all()
        if hit is not None:
            src, payload = hit
            if out is None:
                return src, payload
            if out.nbytes != len(payload):
                raise size_error(src, tag, out.nbytes, len(payload))
            out[:] = payload
            return src, None
        self._wait(r, tag, deadline, on_cancel)
        return r.src, r.data

    def _take(self, srcs: tuple[int, ...], tag: int) -> tuple[int, Payload] | None:
        """Pop the earliest buffered ``tag`` message from one of ``srcs`` (lock held)."""
        unexpected = self._unexpected
        if not unexpected:
            return None
        best = None
        for src in srcs:
            queue = unexpected.get((src, tag))
            if queue and (best is None or queue[0][0] < best[1][0][0]):
                best = (src, queue)
        if best is None:
            return None
        src, queue = best
        payload = queue.popleft()[1]
        if not queue:
            del unexpected[(src, tag)]
        return src, payload

    def _check_closed(self, srcs: tuple[int, ...]) -> None:
        """Raise if every one of ``srcs`` closed its transport (lock held)."""
        if self.closed and all(s in self.closed for s in srcs):
            raise fresh_error(self.closed[srcs[0]])

    def _wait(
        self, r: PendingRecv, tag: int, deadline: Deadline, on_cancel: Callable[[], None]
    ) -> None:
        """Wait for ``r`` to end; withdraw it (safely) at the deadline; raise its error."""
        if not r.done.acquire(True, lock_timeout(deadline.remaining())):
            with self.lock:
                state = r.state
                if state == POSTED:
                    self._posted[tag].remove(r)
                    if not self._posted[tag]:
                        del self._posted[tag]
                elif state == FILLING:
                    r.cancelled = True
            if state == POSTED:
                raise _timeout(r, tag, deadline)
            if state == FILLING:
                on_cancel()
            if not r.done.acquire(True, CANCEL_GRACE_S):
                raise _timeout(r, tag, deadline)
        if r.state != DONE:
            if r.state == CANCELLED:
                raise _timeout(r, tag, deadline)
            raise fresh_error(r.error or self.error or DistBackendError("receive failed"))


def _timeout(r: PendingRecv, tag: int, deadline: Deadline) -> TransportTimeout:
    """The TransportTimeout of receive ``r``."""
    if len(r.srcs) == 1:
        what = f"message {tag} from rank {r.srcs[0]}"
    else:
        what = f"message {tag} from any of ranks {list(r.srcs)}"
    return TransportTimeout(what, deadline.seconds)
