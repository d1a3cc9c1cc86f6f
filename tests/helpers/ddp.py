"""Helpers shared by the DDP tests' rank functions (imported by name in each rank)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import pyc10d as dist


def init(ctx) -> None:
    """Join the default group of the run (gloo: pyc10d's alias)."""
    dist.init_process_group(
        "gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )


# A Gloo worker thread may hold the last reference to a finished Work of torch's group; keeping
# the groups alive until the process exits avoids their destructor running on that thread.
_TORCH_GROUPS_KEPT: list = []


def init_both(ctx) -> object:
    """Join pyc10d's default group and torch's Gloo group (own rendezvous); torch.distributed."""
    import torch.distributed as tdist

    init(ctx)
    tdist.init_process_group(
        "gloo",
        init_method=f"file://{ctx.path('torch_init')}",
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    return tdist


def finish_both(tdist) -> None:
    """Leave both default groups (torch's is kept alive, see ``_TORCH_GROUPS_KEPT``)."""
    # A rank whose test body needs no communication could otherwise exit while its peers are
    # still inside Gloo's connectFullMesh, which they see as "Connection closed by peer".
    tdist.barrier()
    _TORCH_GROUPS_KEPT.append(tdist.group.WORLD)
    tdist.destroy_process_group()
    dist.destroy_process_group()


def sgd_step(model: nn.Module, lr: float = 0.1) -> None:
    """Plain SGD, sparse gradients included (torch.optim's first import costs a rank a second)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)


def error_of(fn: Callable[[], object], kind: type[BaseException] = RuntimeError) -> str:
    """The message ``fn()`` raises (an AssertionError if it raises nothing)."""
    with pytest.raises(kind) as info:
        fn()
    return str(info.value)


def batch(seed: int, rows: int, cols: int, outs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible (input, target) pair, the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g), torch.randn(rows, outs, generator=g)


def assert_same_across_ranks(tensors: list[torch.Tensor]) -> None:
    """Every rank holds the same values (an allgather of each, compared with rank 0's)."""
    for t in tensors:
        t = t.detach().reshape(-1).contiguous()
        gathered = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, t)
        for other in gathered[1:]:
            torch.testing.assert_close(other, gathered[0], rtol=0, atol=0)
