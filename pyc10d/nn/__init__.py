"""``pyc10d.nn``: the ``torch.nn`` pieces that need a process group (``parallel``)."""

from . import parallel
from .parallel import DistributedDataParallel

__all__ = ["DistributedDataParallel", "parallel"]
