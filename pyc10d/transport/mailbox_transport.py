"""``MailboxTransport``: the receive side every transport shares once bytes reach a Mailbox.

Subclasses move bytes (``send``) and feed their :class:`~.mailbox.Mailbox` from a receiver
thread; this base turns the Mailbox into the Transport's receive calls, ``discard``, ``error``
and closing (through the subclass's ``_finalizer``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from ..core.errors import CollectiveAbandonedError, DistBackendError
from ..core.tags import abandon_tag
from ..core.timeouts import Deadline
from .base import CONTROL_SEND_S, Buffer, Transport
from .mailbox import Mailbox, as_byte_view


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

    def abandon(self, seq: int, payload: bytes) -> None:
        """Tell every peer (best effort, at most CONTROL_SEND_S each) that this rank gave up on
        collective ``seq``, and drop the collective's messages here."""
        self._mb.discard(seq)
        for peer in range(self.world_size):
            if peer == self.rank or peer in self._mb.closed:
                continue
            try:
                self.send(peer, abandon_tag(seq), payload, Deadline(CONTROL_SEND_S))
            except DistBackendError:
                pass  # it is gone or stuck: its own receives will fail or time out

    def abandoned(self, seq: int) -> CollectiveAbandonedError | None:
        """The error of a peer that gave up on collective ``seq``, if one did (so far)."""
        return self._mb.first_abandon(seq) if self._mb.abandoned else None

    def wait_abandoned(
        self, seq: int, peers: Sequence[int], seconds: float
    ) -> dict[int, DistBackendError]:
        """Wait up to ``seconds`` for each of ``peers`` to give up on collective ``seq`` (or to
        leave); return the errors of those that did, by rank."""
        return self._mb.wait_abandoned(seq, peers, seconds)

    def close(self) -> None:
        """Close the connections and stop the threads; idempotent."""
        self._finalizer()

    @property
    def error(self) -> DistBackendError | None:
        """The error that failed (or the close that ended) this transport; None while healthy."""
        return self._mb.error

    def peer_failure(self, peers: Sequence[int]) -> DistBackendError | None:
        """The transport's error, else the goodbye of one of ``peers`` that closed cleanly; None
        while they are all there (the shared-memory arena ends its waits on this)."""
        error = self._mb.error
        if error is None and self._mb.closed:
            error = next((self._mb.closed[p] for p in peers if p in self._mb.closed), None)
        return error

    def __enter__(self) -> MailboxTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
