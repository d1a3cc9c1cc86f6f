"""Exception hierarchy mirroring ``torch.distributed``'s (DistError and its subclasses).

Below torch's classes, the failures every transport reports: :class:`TransportTimeout` (a
deadline passed, naming the ranks it waited for in ``ranks``), :class:`PeerFailedError` (a peer
is gone, named by ``peer``) and :class:`CollectiveAbandonedError` (a peer gave up on the
collective this rank still ran, named by ``peer``).
"""

from __future__ import annotations

import torch

from .timeouts import format_ms

if torch.distributed.is_available():
    _TorchDistError: type[RuntimeError] = torch.distributed.DistError
    _TorchBackendError: type[RuntimeError] = torch.distributed.DistBackendError
    _TorchStoreError: type[RuntimeError] = torch.distributed.DistStoreError
    _TorchNetworkError: type[RuntimeError] = torch.distributed.DistNetworkError
    _TorchQueueEmptyError: type[RuntimeError] = torch.distributed.QueueEmptyError
else:  # a torch build without distributed: plain RuntimeErrors
    _TorchDistError = _TorchBackendError = _TorchStoreError = RuntimeError
    _TorchNetworkError = _TorchQueueEmptyError = RuntimeError


class DistError(_TorchDistError):
    """Base class for pyc10d errors; also a ``torch.distributed.DistError`` (a RuntimeError),
    so code written for torch catches pyc10d's errors."""


class DistBackendError(DistError, _TorchBackendError):
    """A collective or point-to-point operation failed (torch's ``DistBackendError``)."""


class DistStoreError(DistError, _TorchStoreError):
    """A key-value store operation failed or timed out (torch's ``DistStoreError``)."""


class DistNetworkError(DistError, _TorchNetworkError):
    """A socket could not be bound, connected, or was lost (torch's ``DistNetworkError``)."""


class QueueEmptyError(DistStoreError, _TorchQueueEmptyError):
    """``queue_pop(key, block=False)`` found the queue empty (torch's ``QueueEmptyError``)."""


class TransportTimeout(DistBackendError):
    """A receive, send or wait did not complete before its deadline (``seconds`` long);
    ``ranks`` are the ranks it waited for, when known (empty otherwise)."""

    def __init__(self, what: str, seconds: float, ranks: tuple[int, ...] = ()) -> None:
        super().__init__(f"Timed out waiting {format_ms(seconds)} for {what}")
        self.seconds = seconds
        self.ranks = tuple(ranks)


class PeerFailedError(DistBackendError):
    """The connection to ``peer`` was lost (it exited, crashed or was killed)."""

    def __init__(self, peer: int, reason: str) -> None:
        super().__init__(f"connection to rank {peer} lost: {reason}")
        self.peer = peer


class CollectiveAbandonedError(DistBackendError):
    """Rank ``peer`` gave up on collective ``seq`` (it timed out or failed there) while this rank
    still ran it: this rank raises too, so that no rank keeps a result the others do not have."""

    def __init__(self, message: str, peer: int, seq: int) -> None:
        super().__init__(message)
        self.peer = peer
        self.seq = seq


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
