"""Third-party backends registered with ``Backend.register_backend`` build the groups created
with their name, through torch's two creator conventions; torch's destroy/new_subgroups rules."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

import pyc10d as dist
from pyc10d.api.backends import DistributedBackendOptions
from pyc10d.testing import spawn, world_sizes

TIMEOUT = 90


class CountingGroup(dist.ProcessGroup):
    """A user backend: pyc10d's group, counting the allreduces that reach it."""

    def __init__(self, store, rank, size, **kwargs) -> None:
        super().__init__(store, rank, size, **kwargs)
        self.allreduces = 0

    def getBackendName(self) -> str:
        return "counting"

    def allreduce(self, *args, **kwargs):
        self.allreduces += 1
        return super().allreduce(*args, **kwargs)


def create_counting(store, rank, size, timeout):
    """torch's plain creator convention: (store, rank, size, timeout)."""
    assert isinstance(timeout, timedelta)
    return CountingGroup(store, rank, size)


EXTENDED_CALLS: list[tuple[DistributedBackendOptions, object]] = []


def create_counting_ext(backend_options, pg_options):
    """torch's extended_api convention: (backend options, pg_options)."""
    EXTENDED_CALLS.append((backend_options, pg_options))
    return CountingGroup(
        backend_options.store, backend_options.group_rank, backend_options.group_size
    )


def user_backend(ctx):
    dist.Backend.register_backend("counting", create_counting, devices=["cpu"])
    dist.Backend.register_backend("counting_ext", create_counting_ext, True, devices=["cpu"])
    dist.init_process_group(
        "counting", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    world = dist.group.WORLD
    assert isinstance(world, CountingGroup) and dist.get_backend() == "counting"
    t = torch.tensor([ctx.rank + 1.0])
    dist.all_reduce(t)
    assert t.item() == ctx.world_size * (ctx.world_size + 1) / 2 and world.allreduces == 1
    marker = object()
    sub = dist.new_group([0, 1], backend="counting_ext", pg_options=marker)
    if ctx.rank < 2:
        ((options, received),) = EXTENDED_CALLS
        assert received is marker and isinstance(sub, CountingGroup)
        assert (options.group_rank, options.group_size) == (ctx.rank, 2)
        assert options.global_ranks_in_group == [0, 1] and options.timeout == world.options.timeout
        t = torch.ones(1)
        dist.all_reduce(t, group=sub)
        assert t.item() == 2 and sub.allreduces == 1 and world.allreduces == 1
        dist.destroy_process_group(sub)
        with pytest.raises(ValueError, match="Invalid process group specified"):
            dist.destroy_process_group(sub)
    else:
        assert sub is dist.GroupMember.NON_GROUP_MEMBER and not EXTENDED_CALLS
        dist.destroy_process_group(sub)  # a non-member: nothing to do, as in torch
    plain = dist.new_group(backend="gloo")
    assert type(plain) is dist.ProcessGroup and dist.get_backend(plain) == "gloo"
    dist.barrier()
    dist.destroy_process_group()
    return t.item()


@world_sizes(2, 3)
def test_registered_backend_builds_its_groups(world_size):
    assert len(spawn(user_backend, world_size, timeout=TIMEOUT)) == world_size


def test_new_subgroups_messages_are_torchs():
    dist.init_process_group(store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(
            ValueError,
            match=r"^The arg 'group_size' \(2\) must not exceed the "
            r"world size \(1\)$",
        ):
            dist.new_subgroups(2)
        with pytest.raises(ValueError, match=r"must be positive"):
            dist.new_subgroups(0)
        mine, groups = dist.new_subgroups(1)
        assert len(groups) == 1 and dist.get_process_group_ranks(mine) == [0]
    finally:
        dist.destroy_process_group()
