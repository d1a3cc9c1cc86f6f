"""DDP communication hooks (torch's ``torch.distributed.algorithms.ddp_comm_hooks``).

``default_hooks`` (``default``) has the allreduce and fp16/bf16 compression hooks,
``powerSGD_hook`` (``powerSGD``) the PowerSGD ones, ``post_localSGD_hook`` the post-local SGD
one (imported by name, as in torch). :class:`DDPCommHookType` names the first two kinds (as in
torch, not post-local SGD), and :func:`register_ddp_comm_hook` registers one on a DDP model
through its ``register_comm_hook``.
"""

from __future__ import annotations

import sys
from enum import Enum
from functools import partial
from typing import Any

from . import default_hooks as default
from . import powerSGD_hook as powerSGD

__all__ = ["DDPCommHookType", "register_ddp_comm_hook"]

if sys.version_info >= (3, 11):
    from enum import member as _enum_member
else:  # a partial is no descriptor before 3.11's change, so it is a member value as it is

    def _enum_member(value: Any) -> Any:
        return value


def _ddp_comm_hook_wrapper(comm_hook: Any, model: Any, state: Any) -> None:
    """Register ``comm_hook`` with ``state`` on ``model``."""
    model.register_comm_hook(state, comm_hook)


def _powerSGD_comm_hook_wrapper(
    comm_hook: Any,
    model: Any,
    state: Any,
    matrix_approximation_rank: int,
    start_powerSGD_iter: int = 1_000,
) -> None:
    """Register a PowerSGD hook; ``state`` is the process group, wrapped in a PowerSGDState."""
    powerSGD_state = powerSGD.PowerSGDState(
        process_group=state,
        matrix_approximation_rank=matrix_approximation_rank,
        start_powerSGD_iter=start_powerSGD_iter,
    )
    model.register_comm_hook(powerSGD_state, comm_hook)


class DDPCommHookType(Enum):
    """The built-in hooks, each a partial taking ``model`` and ``state`` (torch's enum).

    ``DDPCommHookType.ALLREDUCE.value(model=model, state=process_group)`` registers the
    allreduce hook. torch's quantization and no-op hooks are not provided.
    """

    ALLREDUCE = _enum_member(partial(_ddp_comm_hook_wrapper, comm_hook=default.allreduce_hook))
    FP16_COMPRESS = _enum_member(
        partial(_ddp_comm_hook_wrapper, comm_hook=default.fp16_compress_hook)
    )
    BF16_COMPRESS = _enum_member(
        partial(_ddp_comm_hook_wrapper, comm_hook=default.bf16_compress_hook)
    )
    POWER_SGD = _enum_member(
        partial(
            _powerSGD_comm_hook_wrapper,
            comm_hook=powerSGD.powerSGD_hook,
            matrix_approximation_rank=1,
        )
    )
    POWER_SGD_RANK2 = _enum_member(
        partial(
            _powerSGD_comm_hook_wrapper,
            comm_hook=powerSGD.powerSGD_hook,
            matrix_approximation_rank=2,
        )
    )
    BATCHED_POWER_SGD = _enum_member(
        partial(
            _powerSGD_comm_hook_wrapper,
            comm_hook=powerSGD.batched_powerSGD_hook,
            matrix_approximation_rank=1,
        )
    )
    BATCHED_POWER_SGD_RANK2 = _enum_member(
        partial(
            _powerSGD_comm_hook_wrapper,
            comm_hook=powerSGD.batched_powerSGD_hook,
            matrix_approximation_rank=2,
        )
    )


def register_ddp_comm_hook(comm_hook_type: DDPCommHookType, model: Any, state: Any = None) -> None:
    """Register the hook ``comm_hook_type`` names on the DDP ``model``, with ``state``.

    As torch's: ``state`` is passed to the hook (PowerSGD wraps it as its process group).
    """
    comm_hook_type.value(model=model, state=state)
