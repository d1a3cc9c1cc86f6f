"""``MailboxTransport``: the receive side every transport shares once bytes reach a Mailbox.

Subclasses move bytes (``send``) and feed their :class:`~.mailbox.Mailbox` from a receiver
thread; this base turns the Mailbox into the Transport's receive calls, ``discard``, ``error``
and closing (through the subclass's ``_finalizer``).

No rank keeps a result its peer gave up on, even right at the peer's deadline: a peer that
times out decides atomically (under its mailbox lock) and then sends its "abandoned" control
message, so a rank that completes in the instant between would keep its result while the peer
raises. So every rank learns each peer's deadline for a collective (it rides on the signature
message: :meth:`MailboxTransport.expect_deadlines`), and a rank that completes within
:func:`late_window` of a peer's deadline waits until that deadline plus the window for the
peer's word before keeping its result (:meth:`MailboxTransport.abandoned`). Completing earlier
costs nothing more than a clock read.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence

from ..core.errors import CollectiveAbandonedError, DistBackendError
from ..core.tags import abandon_tag
from ..core.timeouts import Deadline
from .base import CONTROL_SEND_S, Buffer, Transport
from .mailbox import DISCARD_MEMORY, Mailbox, as_byte_view

LATE_SHARE = 0.25
"""The share of a collective's timeout its late window is (see :func:`late_window`)."""
LATE_MIN_S = 0.05
"""The shortest late window (collectives with a tiny timeout)."""
LATE_MAX_S = 1.0
"""The longest late window: what a completion far from every deadline is compared against."""


def late_window(timeout_s: float) -> float:
    """How close to a peer's deadline (wall clock, so clock skew between hosts counts too) a
    rank that completes a collective of timeout ``timeout_s`` must check that the peer did not
    give up, and how long after that deadline it waits for the peer's word: the peer's
    reaction to its timeout and the time its message takes must fit in it."""
    window = LATE_SHARE * timeout_s
    return LATE_MIN_S if window < LATE_MIN_S else LATE_MAX_S if window > LATE_MAX_S else window


def writable_view(out: Buffer) -> memoryview:
    """``out`` as a flat writable byte view; ValueError if it is read-only."""
    view = as_byte_view(out)
    if view.readonly:
        raise ValueError("the receive buffer is read-only")
    return view


class MailboxTransport(Transport):
    """A Transport whose receives are served by ``self._mb`` (subclasses set it up)."""

    _mb: Mailbox
    _finalizer: weakref.finalize
    # collective -> (from when a completion may be late: the earliest peer deadline less
    # LATE_MAX_S, the timeout, the peers' deadlines): set by expect_deadlines, taken at completion
    _late: dict[int, tuple[float, float, Sequence[float]]] | None = None

    def _wake(self) -> None:
        """Nudge the receiver thread(s) after a receive was posted or withdrawn."""

    def _check_rank(self, peer: int, what: str) -> None:
        if not 0 <= peer < self.world_size:
            raise ValueError(f"{what} rank {peer} is out of range for world size {self.world_size}")

    def recv(self, src: int, tag: int, out: memoryview, deadline: Deadline) -> None:
        """Receive the next ``(src, tag)`` message into ``out``; its size must be ``len(out)``."""
        self._check_rank(src, "recv from")
        self._mb.receive((src,), tag, writable_view(out), deadline, self._wake)

    def recv_any(self, srcs: Sequence[int], tag: int, out: memoryview, deadline: Deadline) -> int:
        """Receive the first ``tag`` message from any of ``srcs`` into ``out``; return its rank."""
        srcs = tuple(srcs)
        if not srcs:
            raise ValueError("recv_any needs at least one source rank")
        for src in srcs:
            self._check_rank(src, "recv from")
        return self._mb.receive(srcs, tag, writable_view(out), deadline, self._wake)[0]

    def recv_bytes(self, src: int, tag: int, deadline: Deadline) -> bytes:
        """Receive the next ``(src, tag)`` message, whatever its size."""
        self._check_rank(src, "recv from")
        data = self._mb.receive((src,), tag, None, deadline, self._wake)[1]
        return data if type(data) is bytes else bytes(data or b"")

    def discard(self, seq: int) -> None:
        """Drop buffered and future messages of collective ``seq`` (abandoned after a timeout)."""
        self._mb.discard(seq)
        if self._late:
            self._late.pop(seq, None)

    def abandon(self, seq: int, payload: bytes) -> None:
        """Tell every peer (best effort, at most CONTROL_SEND_S each) that this rank gave up on
        collective ``seq``, and drop the collective's messages here."""
        self.discard(seq)
        for peer in range(self.world_size):
            if peer == self.rank or peer in self._mb.closed:
                continue
            try:
                self.send(peer, abandon_tag(seq), payload, Deadline(CONTROL_SEND_S))
            except DistBackendError:
                pass  # it is gone or stuck: its own receives will fail or time out

    def expect_deadlines(self, seq: int, deadlines: Sequence[float], timeout_s: float) -> None:
        """Note the peers' deadlines for collective ``seq`` (``time.time()`` seconds;
        ``deadlines[i]`` is rank ``(rank + 1 + i) % world_size``'s), whose timeout here is
        ``timeout_s``, for :meth:`abandoned` to check at its completion."""
        if not deadlines:
            return
        late = self._late
        if late is None:
            late = self._late = {}
        elif len(late) >= DISCARD_MEMORY:  # collectives that failed before completing
            del late[next(iter(late))]
        # before this, no late window (at most LATE_MAX_S) reaches back to now: nothing to do
        late[seq] = (min(deadlines) - LATE_MAX_S, timeout_s, deadlines)

    def abandoned(self, seq: int) -> CollectiveAbandonedError | None:
        """The error of a peer that gave up on collective ``seq``, if one did; called as the
        collective completes here. Completing within the late window of a peer's deadline, it
        first waits (until that deadline plus the window) for the peer's word: a peer that
        timed out right then has given up, and this rank must not keep its result."""
        late = self._late
        entry = late.pop(seq, None) if late else None
        mb = self._mb
        if mb.abandoned:
            err = mb.first_abandon(seq)
            if err is not None:
                return err
        if entry is None:
            return None
        now = time.time()
        if now < entry[0]:
            return None
        return self._await_late_abandon(seq, now, late_window(entry[1]), entry[2])

    def _await_late_abandon(
        self, seq: int, now: float, window: float, deadlines: Sequence[float]
    ) -> CollectiveAbandonedError | None:
        """Wait for the word of the peers whose deadline for collective ``seq`` is at most
        ``window`` away from ``now`` (or past), until the last such deadline plus ``window``."""
        near = [
            ((self.rank + 1 + i) % self.world_size, d)
            for i, d in enumerate(deadlines)
            if d - window <= now
        ]
        if not near:
            return None
        until = max(d for _, d in near) + window
        peers = [peer for peer, _ in near]
        return self._mb.wait_first_abandon(seq, peers, until - now)

    def wait_abandoned(
        self, seq: int, peers: Sequence[int], seconds: float
    ) -> dict[int, DistBackendError]:
        """Wait up to ``seconds`` for each of ``peers`` to give up on collective ``seq`` (or to
        leave); return the errors of those that did, by rank."""
        return self._mb.wait_abandoned(seq, peers, seconds)

    def wait_peer_failure(self, peers: Sequence[int], seconds: float) -> DistBackendError | None:
        """Wait up to ``seconds`` until one of ``peers`` closed or was lost; return why (None if
        none did, or this transport failed)."""
        return self._mb.wait_lost(peers, seconds)

    def close(self) -> None:
        """Close the connections and stop the threads; idempotent."""
        self._finalizer()

    @property
    def error(self) -> DistBackendError | None:
        """The error that failed (or the close that ended) this transport; None while healthy."""
        return self._mb.error

    def peer_failure(self, peers: Sequence[int]) -> DistBackendError | None:
        """The transport's error, else why one of ``peers`` is gone (it closed, or its
        connection was lost); None while they are all there (the shared-memory arena ends its
        waits on this)."""
        error = self._mb.error
        if error is None and self._mb.closed:
            error = next((self._mb.closed[p] for p in peers if p in self._mb.closed), None)
        return error

    def __enter__(self) -> MailboxTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
