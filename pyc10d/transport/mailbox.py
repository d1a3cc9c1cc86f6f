"""Matching of incoming messages to posted receives, independent of how bytes travel.

A message from ``src`` under ``tag`` completes the oldest posted receive for ``tag`` that accepts
``src``; with none posted it is buffered ("unexpected"), FIFO per ``(src, tag)``. A transport
feeds messages in (whole, or claimed first and filled later) and its callers take them out with
:meth:`Mailbox.receive`. Every state change happens under :attr:`Mailbox.lock`.

Control messages (``abandon_tag(seq)``: a peer gave up on collective ``seq``) are never
buffered: they fail the receives of that collective that no buffered message serves, now and
later, with a :class:`~pyc10d.core.errors.CollectiveAbandonedError` built from the payload
(:func:`abandon_payload`), and messages of that collective arriving later are dropped.
"""

from __future__ import annotations

import _thread
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from ..core.errors import (
    CollectiveAbandonedError,
    DistBackendError,
    PeerFailedError,
    TransportTimeout,
    fresh_error,
)
from ..core.tags import control_seq, describe_tag, is_control, is_p2p, tag_seq
from ..core.timeouts import Deadline
from .base import DEADLINE_WINS_S, Buffer

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
        f"size mismatch for a message of {describe_tag(tag)} from rank {src}: "
        f"expected {expected} bytes, got {got} bytes"
    )


def abandon_payload(message: str, blame: Sequence[int] = (), seconds: float | None = None) -> bytes:
    """The payload of an ``abandon_tag`` message: why its sender gave up (``message``), and, for
    a timeout of ``seconds``, the ranks it found missing (``blame``)."""
    body = {"message": message, "blame": list(blame), "seconds": seconds}
    return json.dumps(body).encode()


def abandon_error(src: int, seq: int, payload: Payload) -> CollectiveAbandonedError:
    """The error that the ``abandon_tag(seq)`` message ``payload`` from ``src`` stands for.

    Besides ``peer`` and ``seq`` it carries ``blame`` (the ranks ``src`` found missing),
    ``seconds`` (its timeout, None if it failed otherwise), ``reason`` (what ``src`` said) and
    ``arrived`` (monotonic time).
    """
    try:
        body = json.loads(bytes(payload))
        message, blame, seconds = str(body["message"]), body["blame"], body["seconds"]
    except (ValueError, KeyError, TypeError):
        message, blame, seconds = "it failed there", [], None
    err = CollectiveAbandonedError(
        f"rank {src} gave up on collective #{seq}: {message}", peer=src, seq=seq
    )
    err.blame = tuple(int(r) for r in blame)
    err.seconds = seconds
    err.reason = message
    err.arrived = time.monotonic()
    return err


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


Posted = tuple[tuple[int, Payload] | None, PendingRecv | None, DistBackendError | None]
"""What :meth:`Mailbox.post` found: a buffered ``(src, payload)``, the receive it posted, or
why nothing can come."""

GRACE_MIN_BYTES = 1 << 20  # unexpected payloads from this size wait briefly for their receive


class Mailbox:
    """Posted receives and buffered messages of one transport endpoint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._receive_posted = threading.Condition(self.lock)  # for accept()'s grace wait
        self._accept_waiting = 0
        self.error: DistBackendError | None = None
        self.closed: dict[int, DistBackendError] = {}  # peers that said goodbye or were lost
        self.lost: DistBackendError | None = None  # the first peer lost without a goodbye
        self._posted: dict[int, list[PendingRecv]] = {}
        self._unexpected: dict[tuple[int, int], deque[tuple[int, Payload]]] = {}
        self._arrivals = 0
        self._discarded: set[int] = set()
        self._discard_order: deque[int] = deque()
        # collective -> {peer: its error}: the peers that gave up on each collective
        self.abandoned: dict[int, dict[int, CollectiveAbandonedError]] = {}
        self._abandon_order: deque[int] = deque()
        self._abandon_seen = threading.Condition(self.lock)
        # set by a transport that also gets messages from some peers another way (a
        # HybridTransport's rings): called (lock held) when one of them closed or was lost;
        # True if it will call ``peer_closed(..., drained=True)`` itself once that way is read
        self.defer_close: Callable[[int, DistBackendError, bool], bool] | None = None

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
        """Buffer an unexpected message (unless its collective was discarded); act on a control
        message (no receive is ever posted for one)."""
        if is_control(tag):
            self._abandoned_by(src, control_seq(tag), payload)
            return
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

    def _abandoned_by(self, src: int, seq: int, payload: Payload) -> None:
        """``src`` gave up on collective ``seq``: fail its receives, now and later (lock held)."""
        errors = self.abandoned.get(seq)
        if errors is None:
            errors = self.abandoned[seq] = {}
            self._abandon_order.append(seq)
            if len(self._abandon_order) > DISCARD_MEMORY:
                self.abandoned.pop(self._abandon_order.popleft(), None)
        if src in errors:
            return
        err = errors[src] = abandon_error(src, seq, payload)
        if len(errors) == 1:
            self._remember_discarded(seq)  # what arrives later: buffered ones stay, to be read
            for tag in [t for t in self._posted if not is_p2p(t) and tag_seq(t) == seq]:
                for r in self._posted.pop(tag):
                    r.finish(FAILED, err)
        self._abandon_seen.notify_all()

    def first_abandon(self, seq: int) -> CollectiveAbandonedError | None:
        """The first peer's error for giving up on collective ``seq``, if one did."""
        errors = self.abandoned.get(seq) if self.abandoned else None
        return next(iter(errors.values())) if errors else None

    def wait_first_abandon(
        self, seq: int, peers: Sequence[int], seconds: float
    ) -> CollectiveAbandonedError | None:
        """Wait up to ``seconds`` until a peer gives up on collective ``seq``; return its error,
        or None once ``seconds`` passed, every one of ``peers`` left (nothing more comes from
        them) or the transport failed."""
        until = time.monotonic() + seconds
        with self.lock:
            while True:
                err = self.first_abandon(seq)
                if err is not None:
                    return err
                remaining = until - time.monotonic()
                if remaining <= 0 or self.error is not None:
                    return None
                if self.closed and all(p in self.closed for p in peers):
                    return None
                self._abandon_seen.wait(remaining)

    def wait_abandoned(
        self, seq: int, peers: Sequence[int], seconds: float
    ) -> dict[int, DistBackendError]:
        """Wait up to ``seconds`` until every one of ``peers`` gave up on collective ``seq``
        (or closed); return the errors of those that did, by rank."""
        until = time.monotonic() + seconds
        with self.lock:
            while True:
                done = {}
                for peer in peers:
                    err = self.abandoned.get(seq, {}).get(peer) or self.closed.get(peer)
                    if err is not None:
                        done[peer] = err
                remaining = until - time.monotonic()
                if len(done) == len(peers) or remaining <= 0 or self.error is not None:
                    return done
                self._abandon_seen.wait(remaining)

    def wait_lost(self, peers: Sequence[int], seconds: float) -> DistBackendError | None:
        """Wait up to ``seconds`` until one of ``peers`` closed or was lost; return why (None
        if none did, or the transport failed)."""
        until = time.monotonic() + seconds
        with self.lock:
            while True:
                gone = next((p for p in peers if p in self.closed), None)
                if gone is not None:
                    return self.closed[gone]
                remaining = until - time.monotonic()
                if remaining <= 0 or self.error is not None:
                    return None
                self._abandon_seen.wait(remaining)

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
        self._abandon_seen.notify_all()

    def peer_closed(
        self, peer: int, err: DistBackendError, lost: bool = False, drained: bool = False
    ) -> None:
        """Note that ``peer`` closed (or, ``lost``, went away without closing); fail receives
        that can only be served by it. Unless ``drained``, :attr:`defer_close` may postpone
        this until what the peer sent another way has been read.

        Its messages already buffered are still handed out first; so are other peers'. Once a
        peer was lost, every peer gone is reported with that loss: the group is broken, the
        others most likely left because of it (or their goodbye was read in the same batch),
        and every later call names the rank lost.
        """
        if not drained and self.defer_close is not None and self.defer_close(peer, err, lost):
            return
        if lost and self.lost is None:
            self.lost = err
            for gone in self.closed:
                self.closed[gone] = err
        self.closed[peer] = self.lost or err
        self._abandon_seen.notify_all()
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
            self._discard_locked(seq)

    def _remember_discarded(self, seq: int) -> None:
        if seq not in self._discarded:
            self._discarded.add(seq)
            self._discard_order.append(seq)
            if len(self._discard_order) > DISCARD_MEMORY:
                self._discarded.discard(self._discard_order.popleft())

    def _discard_locked(self, seq: int) -> None:
        self._remember_discarded(seq)
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
        return self.collect(self.post(srcs, tag, out), srcs, tag, out, deadline, on_cancel)

    def post(self, srcs: tuple[int, ...], tag: int, out: memoryview | None) -> Posted:
        """The first half of :meth:`receive`: take a buffered message or post a receive, without
        waiting (a caller that sends next has the reply land straight in ``out``); pass the
        result to :meth:`collect`. Raises if a peer gave up on the collective."""
        with self.lock:
            return self._take_or_post(srcs, tag, out)

    def collect(
        self,
        posted: Posted,
        srcs: tuple[int, ...],
        tag: int,
        out: memoryview | None,
        deadline: Deadline,
        on_cancel: Callable[[], None],
    ) -> tuple[int, Payload | None]:
        """The second half of :meth:`receive`: wait for what :meth:`post` returned."""
        hit, r, failure = posted
        if failure is not None:
            raise _failure(failure, srcs, tag, deadline)
        if hit is not None:
            src, payload = hit
            if out is None:
                return src, payload
            if out.nbytes != len(payload):
                raise size_error(src, tag, out.nbytes, len(payload))
            out[:] = payload
            return src, None
        assert r is not None
        self._wait(r, tag, deadline, on_cancel)
        return r.src, r.data

    def _take_or_post(self, srcs: tuple[int, ...], tag: int, out: memoryview | None) -> Posted:
        """``(message, None, None)`` if one is buffered, else ``(None, receive, None)`` with a
        receive posted, or ``(None, None, error)`` if none can come (lock held). Raises if a
        peer gave up on the collective."""
        if self.error is not None:
            return None, None, self.error
        hit = self._take(srcs, tag)
        if hit is not None:
            return hit, None, None
        if self.abandoned and not is_p2p(tag):
            abandoned = self.first_abandon(tag_seq(tag))
            if abandoned is not None:
                raise _with_waiters(abandoned, srcs)
        closed = self._closed_error(srcs)
        if closed is not None:
            return None, None, closed
        r = PendingRecv(srcs, out)
        posted = self._posted.get(tag)
        if posted is None:
            self._posted[tag] = [r]
        else:
            posted.append(r)
        if self._accept_waiting:
            self._receive_posted.notify_all()
        return None, r, None

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

    def _closed_error(self, srcs: tuple[int, ...]) -> DistBackendError | None:
        """Why ``srcs`` are gone, if every one of them closed or was lost (lock held)."""
        if self.closed and all(s in self.closed for s in srcs):
            return self.closed[srcs[0]]
        return None

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
                raise _timeout(r.srcs, tag, deadline)
            if state == FILLING:
                on_cancel()
            if not r.done.acquire(True, CANCEL_GRACE_S):
                raise _timeout(r.srcs, tag, deadline)
        if r.state != DONE:
            raise self._ended(r, tag, deadline)

    def _ended(self, r: PendingRecv, tag: int, deadline: Deadline) -> DistBackendError:
        """The error to raise for receive ``r``, which ended without its message."""
        if r.state == CANCELLED:
            return _timeout(r.srcs, tag, deadline)
        err = r.error or self.error or DistBackendError("receive failed")
        if isinstance(err, CollectiveAbandonedError):
            return _with_waiters(err, r.srcs)
        return _failure(err, r.srcs, tag, deadline)


def _timeout(srcs: tuple[int, ...], tag: int, deadline: Deadline) -> TransportTimeout:
    """The TransportTimeout of a receive from ``srcs``: it names them, not the tag."""
    if len(srcs) == 1:
        what = f"rank {srcs[0]} (its message of {describe_tag(tag)})"
    else:
        what = f"any of ranks {list(srcs)} (a message of {describe_tag(tag)})"
    return TransportTimeout(what, deadline.seconds, srcs)


def _failure(
    err: DistBackendError, srcs: tuple[int, ...], tag: int, deadline: Deadline
) -> DistBackendError:
    """``err`` (a lost peer, or the transport's end) to raise from a receive; its timeout
    instead when at most DEADLINE_WINS_S of the deadline is left (waited out first, without the
    lock): the operation's own deadline wins."""
    if isinstance(err, PeerFailedError):
        remaining = deadline.remaining()
        if remaining <= DEADLINE_WINS_S:
            time.sleep(remaining)
            return _timeout(srcs, tag, deadline)
    return fresh_error(err)


def _with_waiters(err: CollectiveAbandonedError, srcs: tuple[int, ...]) -> DistBackendError:
    """A copy of ``err`` to raise from a receive from ``srcs`` (recorded as ``waiting_for``)."""
    new = fresh_error(err)
    new.waiting_for = srcs
    return new
