"""``pyc10d.data.DistributedSampler`` gives exactly torch's indices, and pads like torch's test."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.utils.data.distributed import DistributedSampler as TorchSampler

import pyc10d as dist
from pyc10d.data import DistributedSampler
from pyc10d.testing import spawn

pytestmark = pytest.mark.timeout(60)


def _indices(sampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_same_indices_as_torch():
    grid = itertools.product(
        (0, 1, 5, 7, 16, 101), (1, 2, 3, 8), (True, False), (True, False), (0, 3)
    )
    for length, replicas, shuffle, drop_last, epoch in grid:
        dataset = range(length)
        for rank in range(replicas):
            kwargs = dict(num_replicas=replicas, rank=rank, shuffle=shuffle, drop_last=drop_last)
            ours = DistributedSampler(dataset, seed=11, **kwargs)
            theirs = TorchSampler(dataset, seed=11, **kwargs)
            case = (length, replicas, rank, shuffle, drop_last, epoch)
            assert _indices(ours, epoch) == _indices(theirs, epoch), case
            assert len(ours) == len(theirs) == ours.num_samples, case
            assert ours.total_size == theirs.total_size, case


def test_epochs_shuffle_deterministically_and_ranks_partition():
    samplers = [DistributedSampler(range(10), num_replicas=2, rank=r, seed=3) for r in range(2)]
    first = [_indices(s, 0) for s in samplers]
    assert sorted(first[0] + first[1]) == list(range(10))
    assert [_indices(s, 0) for s in samplers] == first
    assert [_indices(s, 1) for s in samplers] != first


def test_invalid_rank():
    for rank in (-1, 4):
        with pytest.raises(ValueError, match=rf"Invalid rank {rank}, rank should be in the "):
            DistributedSampler(range(8), num_replicas=4, rank=rank)
    with pytest.raises(ValueError, match=r"interval \[0, 3\]"):
        DistributedSampler(range(8), num_replicas=4, rank=4)


def test_defaults_need_an_initialized_group():
    with pytest.raises(ValueError, match="has not been initialized"):
        DistributedSampler(range(8))


def padding_rank(ctx) -> None:
    """torch's test_DistributedSampler_padding, on a real default group."""
    dist.init_process_group(init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size)
    try:
        world_size = dist.get_world_size()
        dataset_size = 100 + world_size + 1
        dataset = list(range(dataset_size))
        tiny_size = max(world_size // 2 - 1, 1)

        def all_equal(count: int) -> None:
            counts = [torch.zeros(1, dtype=torch.long) for _ in range(world_size)]
            dist.all_gather(counts, torch.tensor([count]))
            assert len({c.item() for c in counts}) == 1

        dropped = DistributedSampler(dataset, drop_last=True)  # rank, replicas from the group
        assert dropped.rank == ctx.rank and dropped.num_replicas == world_size
        expected = (
            math.ceil((dataset_size - world_size) / world_size)
            if dataset_size % world_size
            else dataset_size / world_size
        )
        assert dropped.num_samples == expected
        assert dropped.total_size == dropped.num_samples * world_size
        assert len(list(dropped)) == dropped.num_samples
        all_equal(dropped.num_samples)

        for data, size in ((dataset, dataset_size), (list(range(tiny_size)), tiny_size)):
            padded = DistributedSampler(data)
            assert padded.num_samples == math.ceil(size / world_size)
            assert padded.total_size == padded.num_samples * world_size
            assert len(list(padded)) == padded.num_samples
            all_equal(padded.num_samples)
    finally:
        dist.destroy_process_group()


def test_padding_on_a_group():
    spawn(padding_rank, 3, timeout=30)
