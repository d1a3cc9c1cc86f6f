"""``DistributedDataParallel._update_process_group``: shrink and grow the world under one DDP.

Mirrors torch's ``_run_ddp_update_process_group`` (``new_pg`` True and False),
``test_ddp_update_process_group_grad_undefined`` and ``..._no_find_unused`` (torch keeps them
commented out: they need 4 GPUs), at world sizes 2 and 3 and without ``torch.compile``: each
iteration trains normally, then raises in backward (which leaves the Reducer mid-iteration);
``_update_process_group`` must reset it and reduce over the new group from then on. torch's DDP
runs the same sequence on torch Gloo groups in the same processes; gradients agree to 1e-5.

After each failed backward torch's side is drained with a Gloo barrier: torch's Reducer reuses
the buckets that the aborted iteration's allreduces may still be summing, so without it the
next iteration's gradients can come out doubled. pyc10d's DDP gives the next iteration fresh
buckets instead, and is not drained.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as TorchDDP

import pyc10d as dist
from pyc10d.api.state import default_group
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import _TORCH_GROUPS_KEPT
from tests.nn.torch_reference import assert_close_all, finish_both, init_both

TIMEOUT = 150
WIDTH = 32


class SimulateError(torch.autograd.Function):
    """Identity whose backward raises."""

    @staticmethod
    def forward(ctx, inp: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return inp

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        raise RuntimeError("simulated backward failure")


class MyModel(nn.Module):
    """Three layers (several buckets with a small cap); optionally a failing backward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, WIDTH)
        self.fc2 = nn.Linear(WIDTH, WIDTH)
        self.fc3 = nn.Linear(WIDTH, WIDTH)

    def forward(self, inp: torch.Tensor, error: bool) -> torch.Tensor:
        if error:
            inp = SimulateError.apply(inp)
        return self.fc3(self.fc2(self.fc1(inp)))


class Pair:
    """pyc10d's DDP and torch's over copies of one model, stepped together."""

    def __init__(self, rank: int, **kwargs) -> None:
        torch.manual_seed(rank)
        model = MyModel()
        self.ours = DDP(copy.deepcopy(model), **kwargs)
        self.theirs = TorchDDP(copy.deepcopy(model), **kwargs)
        self.input = torch.rand(10, WIDTH, requires_grad=True)
        self.iterations = 0
        self.torch_group = None

    def update(self, ours_group, theirs_group) -> None:
        self.ours._update_process_group(ours_group)
        self.theirs._update_process_group(theirs_group)
        self.torch_group = theirs_group

    def fail(self, ddp) -> None:
        """A backward that raises; torch's side is drained afterwards (see module doc)."""
        with pytest.raises(RuntimeError, match="simulated backward failure"):
            ddp(self.input, error=True).sum().backward()
        if ddp is self.theirs:
            import torch.distributed as tdist

            tdist.barrier(group=self.torch_group)

    def iteration(self, error: bool = True) -> None:
        """A normal iteration (gradients compared), then one whose backward raises."""
        for ddp in (self.ours, self.theirs):
            ddp.zero_grad(set_to_none=True)
            ddp(self.input, error=False).sum().backward()
        ours = [p.grad for p in self.ours.parameters()]
        theirs = [p.grad for p in self.theirs.parameters()]
        assert_close_all(ours, theirs, f"iteration {self.iterations}")
        self.iterations += 1
        if error:
            self.fail(self.ours)
            self.fail(self.theirs)


def _new_groups(tdist, world: int) -> None:
    """new_pg=True: a group of ranks 0-1, one of ranks 1.., then the default group again."""
    pair = Pair(dist.get_rank(), find_unused_parameters=True, bucket_cap_mb=0.005)
    pair.iteration()
    for ranks in ([0, 1], list(range(1, world))):
        pair.update(dist.new_group(ranks), tdist.new_group(ranks))
        if dist.get_rank() in ranks:
            pair.iteration()
            assert pair.ours.reducer.process_group.size() == len(ranks)
    pair.update(default_group(), tdist.group.WORLD)
    pair.iteration()


def _default_group_replaced(ctx, tdist) -> int:
    """new_pg=False: the default groups are destroyed; ranks 1.. make smaller ones."""
    rank, world = ctx.rank, ctx.world_size
    pair = Pair(rank, find_unused_parameters=True, bucket_cap_mb=0.005)
    pair.iteration()
    _TORCH_GROUPS_KEPT.append(tdist.group.WORLD)
    tdist.destroy_process_group()
    dist.destroy_process_group()
    if rank == 0:
        return pair.iterations
    dist.init_process_group(
        "gloo", init_method=f"file://{ctx.path('small')}", rank=rank - 1, world_size=world - 1
    )
    tdist.init_process_group(
        "gloo",
        init_method=f"file://{ctx.path('small_torch')}",
        rank=rank - 1,
        world_size=world - 1,
    )
    pair.update(default_group(), tdist.group.WORLD)
    pair.iteration()
    _TORCH_GROUPS_KEPT.append(tdist.group.WORLD)
    tdist.destroy_process_group()
    dist.destroy_process_group()
    return pair.iterations


def _grad_undefined(tdist) -> None:
    """torch's ..._grad_undefined: the first iteration fails; reset, grads cleared, go on."""
    pair = Pair(dist.get_rank(), find_unused_parameters=True, bucket_cap_mb=0.005)
    pair.fail(pair.ours)
    pair.fail(pair.theirs)
    pair.update(default_group(), tdist.group.WORLD)
    pair.iteration(error=False)
    # without the update, the next forward reports the unfinished reduction (torch: an
    # internal assert, as every parameter was marked ready before backward failed)
    pair.fail(pair.ours)
    pair.fail(pair.theirs)
    with pytest.raises(RuntimeError, match="Expected to have finished reduction"):
        pair.ours(pair.input, error=False)
    with pytest.raises(RuntimeError):
        pair.theirs(pair.input, error=False)
    # torch's ..._no_find_unused: right after construction
    Pair(dist.get_rank()).update(default_group(), tdist.group.WORLD)


def update_process_group(ctx, new_pg: bool) -> int:
    tdist = init_both(ctx)
    if not new_pg:
        return _default_group_replaced(ctx, tdist)
    _new_groups(tdist, ctx.world_size)
    _grad_undefined(tdist)
    finish_both(tdist)
    return -1


@world_sizes(2, 3)
@pytest.mark.parametrize("new_pg", [True, False], ids=["new_group", "default_group"])
def test_update_process_group(world_size, new_pg):
    results = spawn(update_process_group, world_size, args=(new_pg,), timeout=TIMEOUT)
    if not new_pg:
        assert results == [1] + [2] * (world_size - 1)
