"""``pyc10d.nn``: the ``torch.nn`` pieces that need a process group (DDP, SyncBatchNorm)."""

from . import parallel
from .modules import SyncBatchNorm
from .parallel import DistributedDataParallel

__all__ = ["DistributedDataParallel", "SyncBatchNorm", "parallel"]
