"""The transport interface: move tagged byte messages between the ranks of a group.

Algorithms and the process group talk only to this interface, so TCP (any host) and shared
memory (same host) can serve the same collectives. Messages are matched by ``(source, tag)`` in
FIFO order; a message that arrives before its receive is posted is buffered. Every blocking call
takes a :class:`~pyc10d.core.timeouts.Deadline`. When a peer's connection is lost, every pending
and later call that needs that peer raises :class:`~pyc10d.core.errors.PeerFailedError` naming
it (messages it sent before are still delivered, and the other peers' too). Tags are built as
:mod:`pyc10d.core.tags` says.

A rank that gives up on a collective (it timed out or failed there) tells its peers with
:meth:`Transport.abandon`; their receives of that collective then fail, and
:meth:`Transport.abandoned` reports it to a rank that finishes the collective without receiving
anything more (see :mod:`.mailbox`).
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Sequence

from ..core.errors import CollectiveAbandonedError, DistBackendError
from ..core.timeouts import Deadline

Buffer = memoryview | bytes | bytearray

HEADER = struct.Struct("<QQ")
"""The frame header both byte-stream transports (TCP sockets, shared-memory rings) put before
a payload: its tag and its size in bytes."""
HEADER_SIZE = HEADER.size

DEADLINE_WINS_S = 0.1
"""A lost peer noticed when an operation has at most this long left makes the operation wait
out its deadline and time out: its own deadline wins, as where a departure takes longer to
notice (Gloo: a 1 ms operation times out even if its peer is leaving)."""

CONTROL_SEND_S = 0.5
"""The longest a control message (see :meth:`Transport.abandon`) may wait to be sent to a peer."""


class Transport(abc.ABC):
    """Tagged point-to-point messages between ``world_size`` ranks (this one is ``rank``)."""

    rank: int
    world_size: int

    @abc.abstractmethod
    def send(self, dst: int, tag: int, data: Buffer, deadline: Deadline) -> None:
        """Send ``data`` to ``dst`` under ``tag``; returns once ``data`` may be reused."""

    @abc.abstractmethod
    def recv(self, src: int, tag: int, out: memoryview, deadline: Deadline) -> None:
        """Receive the next ``(src, tag)`` message into ``out``; its size must be ``len(out)``."""

    @abc.abstractmethod
    def recv_any(self, srcs: Sequence[int], tag: int, out: memoryview, deadline: Deadline) -> int:
        """Receive the first ``tag`` message from any of ``srcs`` into ``out``; return the rank."""

    @abc.abstractmethod
    def recv_bytes(self, src: int, tag: int, deadline: Deadline) -> bytes:
        """Receive the next ``(src, tag)`` message, whatever its size."""

    @abc.abstractmethod
    def discard(self, seq: int) -> None:
        """Drop buffered and future messages of collective ``seq`` (abandoned after a timeout)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection and stop background threads; idempotent."""

    @property
    @abc.abstractmethod
    def error(self) -> DistBackendError | None:
        """The error that failed this transport, or None while it is healthy."""

    def peer_failure(self, peers: Sequence[int]) -> DistBackendError | None:
        """Why one of ``peers`` cannot take part any more (the transport's error, or a peer's
        clean goodbye where the transport knows it); None while they are all there."""
        return self.error

    def abandon(self, seq: int, payload: bytes) -> None:
        """Tell every peer (best effort, briefly) that this rank gave up on collective ``seq``;
        ``payload`` says why (:func:`~pyc10d.transport.mailbox.abandon_payload`). The base
        class's transport has no way to: it does nothing."""
        return None

    def abandoned(self, seq: int) -> CollectiveAbandonedError | None:
        """The error of a peer that gave up on collective ``seq``, if one did (so far)."""
        return None

    def wait_abandoned(
        self, seq: int, peers: Sequence[int], seconds: float
    ) -> dict[int, DistBackendError]:
        """Wait up to ``seconds`` for each of ``peers`` to give up on collective ``seq`` (or to
        leave); return the errors of those that did, by rank."""
        return {}
