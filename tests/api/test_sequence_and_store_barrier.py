"""Sequence numbers of the default group and subgroups, the store-based barrier, the default
store and default timeouts (torch's ``test_sequence_num_*``, ``test_store_based_barrier``,
``test_default_store_timeout``)."""

from __future__ import annotations

import threading
import time
import warnings
from datetime import timedelta

import pytest
import torch
import torch.distributed as torch_dist

import pyc10d as dist
import pyc10d.distributed_c10d as c10d
from pyc10d.api import init as api_init
from pyc10d.api.state import info
from pyc10d.testing import free_port, spawn, world_sizes

BARRIER_MESSAGE = "Timed out initializing process group in store based barrier"


# -- _store_based_barrier ----------------------------------------------------------------------
def _barrier_stores(kind: str, world_size: int, tmp_path):
    """One store per thread (clients of one server / one file / one shared HashStore)."""
    if kind == "hash":
        shared = dist.HashStore()
        return [shared] * world_size
    if kind == "file":
        path = str(tmp_path / "barrier")
        return [dist.FileStore(path) for _ in range(world_size)]
    port = free_port()
    master = dist.TCPStore("127.0.0.1", port, world_size, True, wait_for_workers=False)
    clients = [dist.TCPStore("127.0.0.1", port, world_size, False) for _ in range(world_size - 1)]
    return [master, *clients]


def _run_barrier(stores, ranks, timeout, group_name="_"):
    """Run the barrier on ``ranks`` in threads; return {rank: error or None}."""
    results = {}

    def work(rank):
        try:
            c10d._store_based_barrier(
                rank=rank,
                store=stores[rank],
                group_name=group_name,
                rendezvous_count=len(stores),
                timeout=timeout,
                logging_interval=timeout / 2,
            )
            results[rank] = None
        except dist.DistStoreError as error:
            results[rank] = error

    threads = [threading.Thread(target=work, args=(rank,)) for rank in ranks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return results


@pytest.mark.parametrize("kind", ["file", "tcp", "hash"])
def test_store_based_barrier_times_out_without_the_last_worker(kind, tmp_path, monkeypatch):
    # torch waits at least 10 s between checks; a shorter floor keeps the test quick
    monkeypatch.setattr(api_init, "MIN_BARRIER_LOGGING_INTERVAL", timedelta(seconds=0.2))
    world_size = 4
    stores = _barrier_stores(kind, world_size, tmp_path)
    started = time.monotonic()
    results = _run_barrier(stores, range(world_size - 1), timedelta(seconds=1))
    assert time.monotonic() - started < 20
    assert sorted(results) == [0, 1, 2]
    for rank, error in results.items():
        assert isinstance(error, dist.DistError) and isinstance(error, torch_dist.DistStoreError)
        message = error.args[0]
        assert BARRIER_MESSAGE in message
        assert f"on rank {rank}, for key: store_based_barrier_key:_" in message
        assert "(world_size=4, num_workers_joined=3, timeout=0:00:01" in message


@pytest.mark.parametrize("kind", ["file", "tcp", "hash"])
def test_store_based_barrier_releases_everyone(kind, tmp_path):
    stores = _barrier_stores(kind, 3, tmp_path)
    results = _run_barrier(stores, range(3), timedelta(seconds=30), group_name="g")
    assert results == {0: None, 1: None, 2: None}
    assert stores[0].add("store_based_barrier_key:g", 0) == 3
    assert stores[0].get("store_based_barrier_key:g:last_worker") == b"1"


class _RecordingStore(dist.HashStore):
    """A HashStore whose ``wait`` records its timeout and times out at once."""

    def __init__(self):
        super().__init__()
        self.waits = []

    def wait(self, keys, timeout=None):
        self.waits.append(timeout)
        raise dist.DistStoreError("wait timed out")


def test_store_based_barrier_checks_at_least_every_ten_seconds_plus_per_thousand_ranks():
    store = _RecordingStore()
    with pytest.raises(dist.DistStoreError, match=BARRIER_MESSAGE) as raised:
        c10d._store_based_barrier(
            0, store, "big", 2000, timedelta(0), logging_interval=timedelta(seconds=1)
        )
    assert store.waits == [timedelta(seconds=12)]  # max(1 s, 10 s + 2000 / 1000 s)
    assert "error=wait timed out)" in str(raised.value)
    store = _RecordingStore()
    with pytest.raises(dist.DistStoreError):
        c10d._store_based_barrier(0, store, "g", 2, timedelta(0), timedelta(seconds=30))
    assert store.waits == [timedelta(seconds=30)]


# -- default store and timeouts ----------------------------------------------------------------
def test_default_timeouts_are_torchs():
    assert dist.default_pg_timeout == torch_dist.default_pg_timeout == timedelta(minutes=30)
    assert c10d._get_default_timeout("gloo") == timedelta(minutes=30)
    assert c10d._get_default_timeout(dist.Backend.PYC10D) == timedelta(minutes=30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert c10d._get_default_timeout("nccl") == timedelta(minutes=30)
    assert [str(w.message) for w in caught] == [
        "Attempted to get default timeout for nccl backend, but NCCL support is not compiled"
    ]


def test_nccl_default_timeout_when_set(monkeypatch):
    monkeypatch.setattr(api_init, "default_pg_nccl_timeout", timedelta(seconds=1))
    assert c10d._get_default_timeout("nccl") == timedelta(seconds=1)


def test_default_store_needs_init():
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        c10d._get_default_store()
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        c10d._get_default_group()


@pytest.mark.parametrize("scheme", ["file", "tcp"])
def test_default_store_timeout(scheme, tmp_path):
    if scheme == "file":
        init_method = f"file://{tmp_path / 'init'}"
    else:
        init_method = f"tcp://127.0.0.1:{free_port()}"
    dist.init_process_group(
        "gloo", init_method=init_method, world_size=1, rank=0, timeout=timedelta(seconds=1)
    )
    try:
        store = c10d._get_default_store()
        assert isinstance(store, dist.PrefixStore) and store.prefix == "default_pg"
        assert c10d._get_default_group() is dist.group.WORLD
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"(?i)timeout|timed out"):
            store.get("nonexistent key")
        assert 0.5 < time.monotonic() - started < 3  # the init timeout, not the 30 min default
    finally:
        dist.destroy_process_group()


# -- sequence numbers --------------------------------------------------------------------------
def _agreed(pg, verify_pg):
    """``pg``'s sequence number, checked to be the same on every member (via ``verify_pg``)."""
    seq = pg._get_sequence_number_for_group()
    numbers = [None] * dist.get_world_size(verify_pg)
    dist.all_gather_object(numbers, seq, group=verify_pg)
    assert len(set(numbers)) == 1, numbers
    return numbers[0]


def _check_incremented(pg, ranks):
    """torch's ``_test_sequence_num_incremented``: +1 per collective, the same on every member;
    with more than 2 members, those that skip one collective lag by one."""
    verify_pg = dist.new_group(ranks=ranks, backend="gloo")
    member = not dist._rank_not_in_group(pg)
    initial = _agreed(pg, verify_pg) if member else -1
    t = torch.ones(1)
    for i in range(10):
        dist.all_reduce(t, group=pg)
        if member:
            assert _agreed(pg, verify_pg) == initial + i + 1
    if member and dist.get_world_size(pg) > 2:
        if dist.get_rank(pg) not in (0, 2):
            dist.all_reduce(t, group=pg, async_op=True)  # never matched: the others skip it
        pairs = [None] * dist.get_world_size(verify_pg)
        mine = (dist.get_rank(pg), pg._get_sequence_number_for_group())
        dist.all_gather_object(pairs, mine, group=verify_pg)
        by_rank = dict(pairs)
        assert by_rank[0] == by_rank[2] == initial + 10
        assert {by_rank[r] for r in by_rank if r not in (0, 2)} == {initial + 11}


def sequence_numbers(ctx):
    dist.init_process_group(
        "gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    size = ctx.world_size
    # set on the default group and on a new group: every rank agrees
    world = c10d._get_default_group()
    numbers = [None] * size
    dist.all_gather_object(numbers, world._get_sequence_number_for_group())
    assert len(set(numbers)) == 1
    pair = dist.new_group([0, 1])
    if not c10d._rank_not_in_group(pair):
        _agreed(pair, pair)
    # incremented on the default group and on a subgroup
    _check_incremented(world, list(range(size)))
    subgroup_ranks = list(range(min(size, 3)))
    subgroup = dist.new_group(subgroup_ranks)
    _check_incremented(subgroup, subgroup_ranks)
    dist.destroy_process_group()
    return True


@world_sizes(2, 3)
def test_sequence_numbers(world_size):
    assert spawn(sequence_numbers, world_size, timeout=120) == [True] * world_size


def local_synchronization(ctx):
    dist.init_process_group(
        "gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    rank, size = ctx.rank, ctx.world_size
    ranks_in = sorted({rank, (rank + 1) % size})
    ranks_out = [r for r in range(size) if r not in ranks_in]
    if ranks_out:  # a non-member that calls gets None, as in torch
        assert dist.new_group(ranks=ranks_out, use_local_synchronization=True) is None
    # only the members of each pair create it: (r, r + 1) for every r, in rank order
    pairs = {}
    for first in range(size):
        members = sorted({first, (first + 1) % size})
        if rank in members and tuple(members) not in pairs:
            pairs[tuple(members)] = dist.new_group(members, use_local_synchronization=True)
    for members, pg in sorted(pairs.items()):
        assert isinstance(pg, dist.ProcessGroup)
        assert dist.get_process_group_ranks(pg) == list(members)
        assert dist.get_group_rank(pg, rank) == members.index(rank)
        assert _agreed(pg, pg) == 0  # a new group starts at 0 on every member
        before = pg._get_sequence_number_for_group()
        t = torch.tensor([float(rank)])
        dist.all_reduce(t, group=pg)
        assert t.item() == sum(members)
        assert pg._get_sequence_number_for_group() == before + 1
    dist.destroy_process_group()
    return sorted(pairs)


@world_sizes(2, 3)
def test_new_group_local_synchronization(world_size):
    results = spawn(local_synchronization, world_size, timeout=120)
    pairs = {tuple(sorted({r, (r + 1) % world_size})) for r in range(world_size)}
    for rank, mine in enumerate(results):
        assert mine == sorted(tuple(p) for p in pairs if rank in p)


def barrier_after_init(ctx):
    import os

    os.environ["TORCH_DIST_INIT_BARRIER"] = "1"
    dist.init_process_group(
        "gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    rank, size = ctx.rank, ctx.world_size
    store = c10d._get_default_store()
    # every rank passed the barrier of the default group ("0") before init returned
    assert store.add("store_based_barrier_key:0", 0) == size
    group = dist.new_group([0, 1])  # every rank takes part in its barrier, members or not
    assert store.add("store_based_barrier_key:1", 0) == size
    counts = None
    if rank in (0, 1):
        local = dist.new_group([0, 1], use_local_synchronization=True)  # only 0 and 1 call
        name = info(local).name
        counts = (
            info(local).store.add(f"store_based_barrier_key:{name}", 0),
            store.check([f"store_based_barrier_key:{name}"]),
        )
        t = torch.ones(1)
        dist.all_reduce(t, group=group)
        assert t.item() == 2
    dist.destroy_process_group()
    return counts


@world_sizes(3)
def test_barrier_after_init(world_size):
    results = spawn(barrier_after_init, world_size, timeout=120)
    # the local group's barrier ran on its own store among its 2 members only
    assert results == [(2, False), (2, False), None]
