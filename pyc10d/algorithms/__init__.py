"""Layer 6 — training-side algorithms at torch's import path (``torch.distributed.algorithms``).

:mod:`.ddp_comm_hooks` holds DDP's communication hooks (allreduce, fp16/bf16 compression,
PowerSGD). The collective algorithms themselves live in :mod:`pyc10d.collectives`.
"""

from . import ddp_comm_hooks

__all__ = ["ddp_comm_hooks"]
