"""The post-local SGD communication hook: on hand-made buckets, and under DDP beside torch's.

Every rank can rebuild every rank's gradients (seeded by rank and step), so the bucket tests check
the global and subgroup averages exactly. The DDP test mirrors torch's
``test_ddp_hook_parity_post_localSGD``, running torch's DDP and hook on a torch Gloo group in
the same process and comparing gradients and parameters at every step.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn

import pyc10d as dist
from pyc10d.algorithms.ddp_comm_hooks.post_localSGD_hook import (
    PostLocalSGDState,
    post_localSGD_hook,
)
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.nn.parallel.grad_bucket import GradBucket
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import error_of, init, init_both

TIMEOUT = 90
TOL = dict(atol=1e-5, rtol=1e-5)
SHAPES = [(4, 3), (5,)]
_TORCH_GROUPS_KEPT: list = []  # see tests/algorithms/test_ddp_comm_hooks.py


def _flat(rank: int, step: int, index: int) -> torch.Tensor:
    """Rank ``rank``'s flat bucket ``index`` at ``step``."""
    gen = torch.Generator().manual_seed(1000 * step + 10 * rank + index)
    return torch.cat([torch.randn(shape, generator=gen).reshape(-1) for shape in SHAPES])


def _bucket(rank: int, step: int, index: int) -> GradBucket:
    """Bucket ``index`` of ``step``; bucket 0 is the last of a step, as under DDP."""
    buffer = _flat(rank, step, index)
    params = [torch.empty(shape) for shape in SHAPES]
    return GradBucket(index, buffer, params, [0, 12], is_last=index == 0)


def _mean(ranks: list[int], step: int, index: int) -> torch.Tensor:
    return torch.stack([_flat(r, step, index) for r in ranks]).mean(0)


def _run_step(state: PostLocalSGDState, rank: int, step: int) -> list[torch.Tensor]:
    """Both buckets of ``step`` through the hook (bucket 1, then the last, bucket 0)."""
    results = []
    for index in (1, 0):
        bucket = _bucket(rank, step, index)
        result = post_localSGD_hook(state, bucket).wait()
        assert result is bucket.buffer()
        results.append(result)
    return results


def _hook_on_buckets(ctx) -> None:
    init(ctx)
    rank, n = ctx.rank, ctx.world_size
    everyone = list(range(n))
    # ranks 0 and 1 together, every other rank alone
    layout = [[0, 1]] + [[r] for r in range(2, n)]
    mine = next(ranks for ranks in layout if rank in ranks)
    subgroup, _ = dist.new_subgroups_by_enumeration(layout)
    state = PostLocalSGDState(process_group=None, subgroup=subgroup, start_localSGD_iter=2)
    for step in range(5):
        members = everyone if step < 2 else mine
        for index, result in zip((1, 0), _run_step(state, rank, step), strict=True):
            torch.testing.assert_close(result, _mean(members, step, index), **TOL)
        assert state.iter == min(step + 1, 2)  # counted by the last bucket, until local SGD

    # no gradient averaging at all once local SGD starts
    state = PostLocalSGDState(
        None, None, start_localSGD_iter=1, post_local_gradient_allreduce=False
    )
    for step in range(3):
        for index, result in zip((1, 0), _run_step(state, rank, step), strict=True):
            expected = _mean(everyone, step, index) if step == 0 else _flat(rank, step, index)
            torch.testing.assert_close(result, expected, **TOL)
    assert state.subgroup is None and state.iter == 1
    _default_subgroup(rank, everyone)
    _not_a_member(rank)
    dist.destroy_process_group()


def _default_subgroup(rank: int, everyone: list[int]) -> None:
    """The default subgroup: LOCAL_WORLD_SIZE consecutive ranks, else the whole world."""
    for local_world_size, members in (("1", [rank]), (None, everyone)):
        if local_world_size is None:
            os.environ.pop("LOCAL_WORLD_SIZE", None)
        else:
            os.environ["LOCAL_WORLD_SIZE"] = local_world_size
        state = PostLocalSGDState(None, None, start_localSGD_iter=1)
        for step in range(3):
            for index, result in zip((1, 0), _run_step(state, rank, step), strict=True):
                expected = _mean(everyone if step == 0 else members, step, index)
                torch.testing.assert_close(result, expected, **TOL)
        assert dist.get_process_group_ranks(state.subgroup) == members
    os.environ["LOCAL_WORLD_SIZE"] = "two"
    state = PostLocalSGDState(None, None, start_localSGD_iter=0)
    message = error_of(lambda: post_localSGD_hook(state, _bucket(rank, 0, 0)), ValueError)
    assert "LOCAL_WORLD_SIZE='two' is not a positive integer" in message


def _not_a_member(rank: int) -> None:
    """A group this rank is not in: an error (the buffer untouched), nothing hangs."""
    others = dist.new_group(ranks=[0])
    for state in (
        PostLocalSGDState(others, None, start_localSGD_iter=5),
        PostLocalSGDState(None, others, start_localSGD_iter=0),
    ):
        bucket = _bucket(rank, 0, 0)
        if rank == 0:
            result = post_localSGD_hook(state, bucket).wait()
            torch.testing.assert_close(result, _flat(0, 0, 0))  # a group of one: itself
        else:
            message = error_of(lambda: post_localSGD_hook(state, bucket), ValueError)  # noqa: B023
            assert "not a member of the process group" in message
            assert torch.equal(bucket.buffer(), _flat(rank, 0, 0))


@world_sizes(2, 3)
def test_hook_on_buckets(world_size):
    spawn(_hook_on_buckets, world_size, timeout=TIMEOUT)


# -- under DDP, beside torch's -------------------------------------------------------------------
def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
    )


def _train_step(model: nn.Module, rank: int, step: int) -> None:
    gen = torch.Generator().manual_seed(100 * step + rank)  # different data on every rank
    x, y = torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen)
    model.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()


def _configs(tdist):
    """(name, our state, torch's state) for each case of torch's parity test."""
    torch_pairs, _ = tdist.new_subgroups(group_size=1)  # ours: LOCAL_WORLD_SIZE=1, subgroup None
    return [
        (
            "world subgroup",
            PostLocalSGDState(None, dist.group.WORLD, start_localSGD_iter=3),
            _torch_state(None, tdist.group.WORLD, 3),
        ),
        (
            "no local allreduce",
            PostLocalSGDState(None, dist.group.WORLD, 3, post_local_gradient_allreduce=False),
            _torch_state(None, tdist.group.WORLD, 3, post_local_gradient_allreduce=False),
        ),
        (
            "default subgroup",
            PostLocalSGDState(None, None, start_localSGD_iter=3),
            _torch_state(None, torch_pairs, 3),
        ),
        (
            "never local",
            PostLocalSGDState(None, None, start_localSGD_iter=1000),
            _torch_state(None, None, 1000),
        ),
    ]


def _torch_state(process_group, subgroup, start: int, **kwargs):
    from torch.distributed.algorithms.ddp_comm_hooks import post_localSGD_hook as theirs

    return theirs.PostLocalSGDState(process_group, subgroup, start, **kwargs)


def _ddp_parity(ctx) -> None:
    import torch.distributed as tdist
    from torch.distributed.algorithms.ddp_comm_hooks import post_localSGD_hook as theirs

    init_both(ctx)
    os.environ["LOCAL_WORLD_SIZE"] = "1"
    rank = ctx.rank
    for name, ours_state, theirs_state in _configs(tdist):
        ours = DDP(_net(), bucket_cap_mb=0.0005)
        ours.register_comm_hook(ours_state, post_localSGD_hook)
        model = torch.nn.parallel.DistributedDataParallel(_net(), bucket_cap_mb=0.0005)
        model.register_comm_hook(theirs_state, theirs.post_localSGD_hook)
        local = _net()  # no DDP: this rank's own gradients
        for step in range(6):
            for net in (ours, model, local):
                _train_step(net, rank, step)
            for a, b, c in zip(
                ours.parameters(), model.parameters(), local.parameters(), strict=True
            ):
                torch.testing.assert_close(a.grad, b.grad, **TOL, msg=f"{name}, step {step}")
                if name not in ("no local allreduce", "default subgroup") or step < 3:
                    continue  # from step 3 these two reduce nothing: the local gradients
                torch.testing.assert_close(a.grad, c.grad, **TOL, msg=f"{name}, step {step}")
            for net in (ours, model, local):
                with torch.no_grad():
                    for p in net.parameters():
                        p.add_(p.grad, alpha=-0.1)
            local.load_state_dict(copy.deepcopy(ours.module.state_dict()))
        assert ours_state.iter == theirs_state.iter == min(6, ours_state.start_localSGD_iter)
        if name == "default subgroup":  # LOCAL_WORLD_SIZE=1: each rank alone
            assert dist.get_process_group_ranks(ours_state.subgroup) == [rank]
    _TORCH_GROUPS_KEPT.append(tdist.group.WORLD)
    tdist.destroy_process_group()
    dist.destroy_process_group()


@world_sizes(2, 3)
def test_same_as_torch_under_ddp(world_size):
    spawn(_ddp_parity, world_size, timeout=TIMEOUT)


# -- in this process -----------------------------------------------------------------------------
def test_state_is_torchs():
    from torch.distributed.algorithms.ddp_comm_hooks import post_localSGD_hook as theirs

    assert PostLocalSGDState.__slots__ and set(PostLocalSGDState.__slots__) == set(
        theirs.PostLocalSGDState.__slots__
    )
    state = PostLocalSGDState("pg", "sub", 3)
    assert (state.process_group, state.subgroup, state.start_localSGD_iter) == ("pg", "sub", 3)
    assert state.post_local_gradient_allreduce and state.iter == 0
    with pytest.raises(AttributeError):
        state.other = 1  # slots, as torch's
    for is_last in (False, True, True):
        state.maybe_increase_iter(GradBucket(0, torch.zeros(1), [], [], is_last))
    assert state.iter == 2
