"""Layer 6 — training-side algorithms at torch's import path (``torch.distributed.algorithms``).

:mod:`.ddp_comm_hooks` holds DDP's communication hooks (allreduce, fp16/bf16 compression,
PowerSGD, post-local SGD); :mod:`.model_averaging` the model averagers of post-local and
hierarchical SGD. The collective algorithms themselves live in :mod:`pyc10d.collectives`.
"""

from . import ddp_comm_hooks, model_averaging

__all__ = ["ddp_comm_hooks", "model_averaging"]
