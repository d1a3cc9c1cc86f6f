"""The transport interface: move tagged byte messages between the ranks of a group.

Algorithms and the process group talk only to this interface, so TCP (any host) and shared
memory (same host) can serve the same collectives. Messages are matched by ``(source, tag)`` in
FIFO order; a message that arrives before its receive is posted is buffered. Every blocking call
takes a :class:`~pyc10d.core.timeouts.Deadline`. When a peer's connection is lost, the transport is
failed: every pending and later call raises :class:`PeerFailedError` naming that peer.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from ..core.errors import DistBackendError
from ..core.timeouts import Deadline, format_ms

Buffer = memoryview | bytes | bytearray

STEP_BITS = 24  # a collective's tags are ``seq << STEP_BITS | step``
P2P_TAG_BIT = 1 << 62  # user send/recv tags live apart from collective tags


def op_tag(seq: int, step: int = 0) -> int:
    """The tag of message ``step`` of collective number ``seq``."""
    return (seq << STEP_BITS) | step


def tag_seq(tag: int) -> int:
    """The collective sequence number a tag belongs to."""
    return tag >> STEP_BITS


def p2p_tag(user_tag: int) -> int:
    """The transport tag of a user's send/recv ``tag``."""
    return P2P_TAG_BIT | user_tag


class TransportTimeout(DistBackendError):
    """A receive (or send) did not complete before its deadline."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"Timed out waiting {format_ms(seconds)} for {what}")
        self.seconds = seconds


class PeerFailedError(DistBackendError):
    """The connection to ``peer`` was lost (it exited, crashed or was killed)."""

    def __init__(self, peer: int, reason: str) -> None:
        super().__init__(f"connection to rank {peer} lost: {reason}")
        self.peer = peer


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
