"""DDP's side of uneven-input training: what a joined rank runs (torch's ``_DDPJoinHook``).

While other ranks still train, a joined rank matches, in order, each of their iteration's
collectives: bucket rebuilding, the buffer broadcast, the "will backward sync?" allreduce, one
allreduce of zeros per gradient bucket, and the unused-parameter bitmap allreduce. When all have
joined, the model of the last rank to join is broadcast to everyone.
"""

from __future__ import annotations

from typing import Any

import torch

from ...process_group import ReduceOp
from .join import JoinHook
from .module_sync import broadcast_coalesced, sync_module_states


def find_common_rank(ddp: Any, input_rank: int, rank_cond: bool) -> int:
    """The largest rank whose ``rank_cond`` holds (an allreduce MAX across the group)."""
    rank_to_use = torch.tensor([input_rank if rank_cond else -1])
    ddp.process_group.allreduce([rank_to_use], op=ReduceOp.MAX).wait()
    if rank_to_use.item() == -1:
        ddp._log_and_throw(
            ValueError,
            "BUG! Expected rank_cond to be true for at least one process. This indicates a bug "
            "in PyTorch, please report an issue.",
        )
    return int(rank_to_use.item())


def check_global_requires_backward_grad_sync(ddp: Any, is_joined_rank: bool) -> bool | None:
    """Allreduce whether this iteration's backward syncs; a joined rank learns the answer."""
    syncs = not is_joined_rank and ddp.require_backward_grad_sync
    flag = torch.ones(1) if syncs else torch.zeros(1)
    work = ddp.process_group.allreduce([flag])
    if not is_joined_rank:
        return None
    work.wait()
    return flag.item() != 0


class DDPJoinHook(JoinHook):
    """Shadows a DDP module's per-iteration collectives on a rank that has joined."""

    def __init__(self, ddp: Any, divide_by_initial_world_size: bool) -> None:
        ddp._uneven_input_join = True
        ddp._divide_by_initial_world_size = divide_by_initial_world_size
        self.ddp = ddp

    def main_hook(self) -> None:
        """Match one iteration of the ranks still training."""
        ddp = self.ddp
        ddp.reducer._rebuild_buckets()
        if ddp.will_sync_module_buffers():
            src = find_common_rank(ddp, ddp._distributed_rank, False)
            ddp._assign_modules_buffers()
            with torch.no_grad():
                broadcast_coalesced(
                    ddp.process_group, ddp.modules_buffers, ddp.broadcast_bucket_size, src
                )
        should_sync = check_global_requires_backward_grad_sync(ddp, is_joined_rank=True)
        ddp.require_forward_param_sync = should_sync
        if not should_sync:
            return
        futures = [
            ddp.reducer._run_comm_hook(bucket)
            for bucket in ddp.reducer._get_zeros_like_grad_buckets()
        ]
        for future in futures:
            future.wait()
        if ddp.find_unused_parameters:
            used = ddp.reducer._get_local_used_map()
            used.zero_()
            ddp.process_group.allreduce([used]).wait()
        ddp.reducer._push_all_rebuilt_params()

    def post_hook(self, is_last_joiner: bool) -> None:
        """Copy the model of the last rank to join to every rank."""
        ddp = self.ddp
        src = find_common_rank(ddp, ddp._distributed_rank, is_last_joiner)
        sync_module_states(
            ddp.module,
            ddp.process_group,
            ddp.broadcast_bucket_size,
            src,
            ddp.parameters_to_ignore,
            ddp.broadcast_buffers,
        )
