"""Exception hierarchy mirroring ``torch.distributed``'s (DistError and its subclasses).

Below torch's classes, the two failures every transport reports: :class:`TransportTimeout` (a
deadline passed) and :class:`PeerFailedError` (a peer is gone, named by ``peer``).
"""

from __future__ import annotations

from .timeouts import format_ms


class DistError(RuntimeError):
    """Base class for pyc10d errors; a ``RuntimeError`` like torch's ``DistError``."""


class DistBackendError(DistError):
    """A collective or point-to-point operation failed (torch's ``DistBackendError``)."""


class DistStoreError(DistError):
    """A key-value store operation failed or timed out (torch's ``DistStoreError``)."""


class DistNetworkError(DistError):
    """A socket could not be bound, connected, or was lost (torch's ``DistNetworkError``)."""


class QueueEmptyError(DistStoreError):
    """``queue_pop(key, block=False)`` found the queue empty (torch's ``QueueEmptyError``)."""


class TransportTimeout(DistBackendError):
    """A receive, send or wait did not complete before its deadline (``seconds`` long)."""

    def __init__(self, what: str, seconds: float) -> None:
        super().__init__(f"Timed out waiting {format_ms(seconds)} for {what}")
        self.seconds = seconds


class PeerFailedError(DistBackendError):
    """The connection to ``peer`` was lost (it exited, crashed or was killed)."""

    def __init__(self, peer: int, reason: str) -> None:
        super().__init__(f"connection to rank {peer} lost: {reason}")
        self.peer = peer


def fresh_error(err: DistBackendError) -> DistBackendError:
    """A copy of ``err`` (same class and attributes, ``peer`` included) to raise, so that one
    stored error never piles up tracebacks from every thread that raises it."""
    new = err.__class__.__new__(err.__class__)
    new.__dict__.update(err.__dict__)
    new.args = err.args
    return new


def with_context(err: DistBackendError, prefix: str) -> DistBackendError:
    """A copy of ``err`` (same class and attributes) whose message starts with ``prefix``, e.g.
    ``[rank 0] allreduce (#3) failed: ``: callers learn where it failed and still read ``peer``."""
    new = fresh_error(err)
    new.args = (f"{prefix}{err}",)
    return new
