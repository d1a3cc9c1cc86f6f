"""``pyc10d.nn.parallel``: ``DistributedDataParallel`` and what communication hooks receive.

``compute_bucket_assignment_by_size`` is torch's ``dist._compute_bucket_assignment_by_size``;
``Join`` / ``Joinable`` / ``JoinHook`` are torch.distributed.algorithms.join's.
"""

from .bucket_assignment import compute_bucket_assignment_by_size
from .distributed import DistributedDataParallel
from .grad_bucket import GradBucket
from .join import Join, Joinable, JoinHook
from .reducer import Reducer

__all__ = [
    "DistributedDataParallel",
    "GradBucket",
    "Join",
    "JoinHook",
    "Joinable",
    "Reducer",
    "compute_bucket_assignment_by_size",
]
