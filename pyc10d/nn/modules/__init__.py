"""``torch.nn`` modules that communicate over a pyc10d process group (``SyncBatchNorm``)."""

from .batchnorm import SyncBatchNorm

__all__ = ["SyncBatchNorm"]
