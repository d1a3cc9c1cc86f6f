"""Exception hierarchy mirroring ``torch.distributed``'s (DistError and its subclasses)."""

from __future__ import annotations


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
