"""init_process_group, destroy_process_group, Backend, group queries and subgroups."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import torch

import pyc10d as dist
from pyc10d.testing import spawn, world_sizes


def test_backend_names():
    assert dist.Backend("GLOO") == "gloo"
    assert dist.Backend.GLOO == "gloo"
    assert dist.Backend("cpu:gloo") == "cpu:gloo"  # a config string, as torch keeps it
    assert dist.Backend("pyc10d") == dist.Backend.PYC10D
    for name in ("nccl", "mpi", "NCCL"):
        with pytest.raises(ValueError, match="pyc10d does not provide"):
            dist.Backend(name)
    with pytest.raises(ValueError, match="Invalid backend"):
        dist.Backend("carrier-pigeon")


def test_not_initialized():
    assert dist.is_available()
    assert not dist.is_initialized()
    assert dist.group.WORLD is None
    with pytest.raises(ValueError, match="has not been initialized"):
        dist.get_rank()


def test_init_with_store_single_rank():
    root_handlers = list(logging.getLogger().handlers)
    store = dist.HashStore()
    dist.init_process_group(store=store, rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        assert dist.get_rank() == 0 and dist.get_world_size() == 1
        assert dist.get_backend() == "pyc10d"
        assert dist.group.WORLD is dist.GroupMember.WORLD
        with pytest.raises(ValueError, match="twice"):
            dist.init_process_group(store=store, rank=0, world_size=1)
        t = torch.ones(2)
        dist.group.WORLD.allreduce([t]).wait()
        assert torch.equal(t, torch.ones(2))
    finally:
        dist.destroy_process_group()
    assert not dist.is_initialized()
    assert logging.getLogger().handlers == root_handlers  # no handlers added


def test_init_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pyc10d does not provide"):
        dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1)
    with pytest.raises(ValueError, match="must be given with store"):
        dist.init_process_group(store=dist.HashStore())
    with pytest.raises(ValueError, match="Cannot specify both"):
        dist.init_process_group(init_method="env://", store=dist.HashStore(), rank=0, world_size=1)
    assert not dist.is_initialized()


def init_every_way(ctx, how: str):
    if how == "env":
        dist.init_process_group("gloo")
    elif how == "file":
        dist.init_process_group(
            "gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
        )
    elif how == "tcp":
        url = f"tcp://{ctx.env['MASTER_ADDR']}:{ctx.env['MASTER_PORT']}"
        dist.init_process_group(
            "cpu:gloo",
            init_method=url,
            rank=ctx.rank,
            world_size=ctx.world_size,
            timeout=timedelta(seconds=60),
        )
    else:
        dist.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    assert dist.get_rank() == ctx.rank and dist.get_world_size() == ctx.world_size
    assert dist.get_backend() == {"store": "pyc10d", "tcp": "cpu:gloo"}.get(how, "gloo")
    t = torch.tensor([float(ctx.rank)])
    dist.group.WORLD.allreduce([t]).wait()
    result = t.item()
    dist.destroy_process_group()
    assert not dist.is_initialized()
    return result


@world_sizes(2, 3)
@pytest.mark.parametrize("how", ["env", "file", "tcp", "store"])
def test_init_process_group_every_way(world_size, how):
    results = spawn(init_every_way, world_size, args=(how,), timeout=90)
    assert results == [float(sum(range(world_size)))] * world_size


def subgroups(ctx):
    dist.init_process_group(
        "gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    rank, size = ctx.rank, ctx.world_size
    members = list(range(1, size))  # everyone but rank 0
    sub = dist.new_group(members)
    if rank == 0:
        assert sub is dist.GroupMember.NON_GROUP_MEMBER
        assert dist.get_rank(sub) == -1 and dist.get_world_size(sub) == -1
    else:
        assert dist.get_rank(sub) == rank - 1 and dist.get_world_size(sub) == size - 1
        assert dist.get_process_group_ranks(sub) == members
        assert dist.get_group_rank(sub, rank) == rank - 1
        assert dist.get_global_rank(sub, 0) == 1
        with pytest.raises(ValueError, match="not part of group"):
            dist.get_group_rank(sub, 0)
        t = torch.tensor([float(rank)])
        sub.allreduce([t]).wait()
        assert t.item() == sum(members)
        assert sub._get_sequence_number_for_group() == 1
    # the default group keeps its own numbering
    dist.group.WORLD.barrier().wait()
    # whole-world group, subgroups by size and by enumeration, split_group
    everyone = dist.new_group()
    assert dist.get_process_group_ranks(everyone) == list(range(size))
    mine, all_subgroups = dist.new_subgroups(group_size=1)
    assert len(all_subgroups) == size and dist.get_process_group_ranks(mine) == [rank]
    enumeration = [[0, 1]] + ([[2]] if size == 3 else [])
    mine, groups = dist.new_subgroups_by_enumeration(enumeration)
    assert len(groups) == len(enumeration)
    expected = [0, 1] if rank < 2 else [2]
    assert dist.get_process_group_ranks(mine) == expected
    t = torch.tensor([1.0])
    mine.allreduce([t]).wait()
    assert t.item() == len(expected)
    split = dist.split_group(split_ranks=[[r] for r in range(size)])
    assert dist.get_process_group_ranks(split) == [rank]
    # a local-synchronization group: only its members call
    if rank in (0, 1):
        local = dist.new_group([0, 1], use_local_synchronization=True)
        t = torch.tensor([float(rank + 1)])
        local.allreduce([t]).wait()
        assert t.item() == 3.0
    dist.group.WORLD.barrier().wait()
    with pytest.raises(ValueError, match="duplicates"):
        dist.new_group([0, 0])
    with pytest.raises(ValueError, match="must be integers"):
        dist.new_group([size])
    dist.destroy_process_group()
    return True


@world_sizes(2, 3)
def test_subgroups(world_size):
    assert spawn(subgroups, world_size, timeout=90) == [True] * world_size


def rank_membership(ctx):
    dist.init_process_group(
        "gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    group = dist.new_group(ranks=[1])
    if ctx.rank == 1:
        assert dist.get_group_rank(group, 1) == 0
        with pytest.raises(ValueError, match="not part of group"):
            dist.get_group_rank(group, 0)
        assert dist.get_global_rank(group, 0) == 1
        with pytest.raises(ValueError, match="not part of group"):
            dist.get_global_rank(group, 1)
        assert dist.get_process_group_ranks(group) == [1]
    else:
        assert group is dist.GroupMember.NON_GROUP_MEMBER
        with pytest.raises(ValueError, match="not registered"):
            dist.get_group_rank(group, 1)
    other = dist.ProcessGroup(dist.HashStore(), 0, 1)  # never registered with the API
    with pytest.raises(ValueError, match="not registered"):
        dist.get_group_rank(other, 0)
    other.shutdown()
    dist.destroy_process_group()


def test_rank_membership():
    spawn(rank_membership, 2, timeout=60)


def detail_mode_catches_mismatches(ctx):
    dist.init_process_group(
        "gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    dist.set_debug_level(dist.DebugLevel.DETAIL)
    assert dist.get_debug_level() == dist.DebugLevel.DETAIL
    with pytest.raises(RuntimeError, match="Detected mismatch between collectives on ranks"):
        dist.all_reduce(torch.ones(4 + ctx.rank))  # shapes differ
    with pytest.raises(
        RuntimeError, match=r"Op type: (ALLREDUCE vs BROADCAST|BROADCAST vs ALLREDUCE)"
    ):
        if ctx.rank == 0:
            dist.all_reduce(torch.ones(2))
        else:
            dist.broadcast(torch.ones(2), src=0)
    t = torch.ones(3)
    dist.all_reduce(t)  # matching calls still work
    assert t.tolist() == [float(ctx.world_size)] * 3
    dist.set_debug_level(dist.DebugLevel.OFF)
    dist.destroy_process_group()


@world_sizes(2, 3)
def test_detail_mode_through_functional_collectives(world_size):
    spawn(detail_mode_catches_mismatches, world_size, timeout=90)
