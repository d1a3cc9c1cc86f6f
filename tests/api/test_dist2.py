"""pyc10d.dist2, torch's ``_dist2`` group API: new_group over env://, backends, the current-group
context manager, every collective on the group and on its splits, split_group and
merge_remote_group (torch's ``test_dist2.py``)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

import pyc10d as dist
from pyc10d import dist2
from pyc10d.testing import free_port, spawn, world_sizes

T = timedelta(seconds=30)


@pytest.fixture
def single_rank_env(monkeypatch):
    """env:// for a job of one rank (rank 0 hosts the store on a free port)."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    groups = []
    yield groups
    for pg in groups:
        pg.shutdown()


def test_context_manager(single_rank_env):
    pg1 = dist2.new_group(backend="gloo", timeout=timedelta(seconds=60), device="cpu")
    pg2 = dist2.new_group(backend="gloo", timeout=timedelta(seconds=60), device="cpu")
    single_rank_env += [pg1, pg2]
    assert isinstance(pg1, dist.ProcessGroup) and pg1 is not pg2
    assert not dist.is_initialized()  # no global state
    assert dist2.current_process_group() is None
    with dist2.process_group(pg1):
        assert dist2.current_process_group() is pg1
        with dist2.process_group(pg2):
            assert dist2.current_process_group() is pg2
        assert dist2.current_process_group() is pg1
    assert dist2.current_process_group() is None
    with pytest.raises(KeyError), dist2.process_group(pg2):
        raise KeyError("restored after an error too")
    assert dist2.current_process_group() is None


def test_current_group_is_per_thread(single_rank_env):
    import threading

    pg = dist2.new_group("gloo", timedelta(seconds=60), "cpu")
    single_rank_env.append(pg)
    seen = []
    with dist2.process_group(pg):
        thread = threading.Thread(target=lambda: seen.append(dist2.current_process_group()))
        thread.start()
        thread.join()
        assert dist2.current_process_group() is pg
    assert seen == [None]


def test_group_options_and_backends(single_rank_env):
    pg = dist2.new_group("gloo", timedelta(seconds=42), torch.device("cpu"))
    tuned = dist2.new_group("pyc10d", timedelta(seconds=43), "cpu", threads=3)
    single_rank_env += [pg, tuned]
    assert pg._get_backend(torch.device("cpu")).options._timeout == timedelta(seconds=42)
    assert tuned.options.threads == 3 and tuned.options.timeout == timedelta(seconds=43)
    with pytest.raises(ValueError, match=r"Backend nccl not registered.*'gloo', 'pyc10d'"):
        dist2.new_group("nccl", T, "cpu")
    with pytest.raises(AssertionError, match=r"Gloo backend received unexpected kwargs.*colour"):
        dist2.new_group("gloo", T, "cpu", colour="blue")
    with pytest.raises(KeyError, match="Unknown option colour"):
        dist2.new_group("pyc10d", T, "cpu", colour="blue")
    with pytest.raises(ValueError, match="serves cpu and cuda tensors, not device 'meta'"):
        dist2.new_group("gloo", T, "meta")


def test_register_backend(single_rank_env, monkeypatch):
    monkeypatch.setattr(dist2, "_BACKENDS", dict(dist2._BACKENDS))
    calls = []

    def factory(store, rank, world_size, timeout, device, **kwargs):
        calls.append((rank, world_size, timeout, device, kwargs))
        pg = dist.ProcessGroup(store, rank, world_size)
        single_rank_env.append(pg)
        return pg

    dist2.register_backend("mine", factory)
    with pytest.raises(ValueError, match="Backend mine already registered"):
        dist2.register_backend("mine", factory)
    with pytest.raises(ValueError, match="Backend gloo already registered"):
        dist2.register_backend("gloo", factory)
    pg = dist2.new_group("mine", timedelta(seconds=5), "cpu", flavour=1)
    assert calls == [(0, 1, timedelta(seconds=5), torch.device("cpu"), {"flavour": 1})]
    assert pg.size() == 1


def test_split_rejects_bad_ranks(single_rank_env):
    pg = dist2.new_group("gloo", T, "cpu")
    single_rank_env.append(pg)
    with pytest.raises(RuntimeError, match="Split ranks cannot be empty"):
        pg.split_group([])
    with pytest.raises(RuntimeError, match="should be no larger than the world_size"):
        pg.split_group([0, 1])
    with pytest.raises(ValueError, match=r"ranks \[3\] include \[3\], not ranks of this group"):
        pg.split_group([3])
    with pytest.raises(ValueError, match=r"include \[-1\]"):
        pg.split_group([-1])
    with pytest.raises(TypeError, match=r"opts must be a pyc10d ProcessGroup\.Options"):
        pg.split_group([0], opts=object())


def test_merge_rejects_extra_members(single_rank_env):
    pg = dist2.new_group("gloo", T, "cpu")
    single_rank_env.append(pg)
    store = dist.HashStore()
    store.add("mergeGroupRank", 1)  # someone already took the only rank
    with pytest.raises(ValueError, match=r"2 processes joined the merge .* but size=1"):
        pg.merge_remote_group(store, 1, T)
    with pytest.raises(ValueError, match="size must be a positive int"):
        pg.merge_remote_group(dist.HashStore(), 0, T)


# -- every collective, on the group and on its splits ------------------------------------------
def run_collectives(pg, label: int) -> None:
    """Every collective of torch's ProcessGroupTest (plus send/recv and alltoall) on ``pg``;
    ``label`` is this process's value (its rank in ``pg`` unless said otherwise)."""
    rank, size = pg.rank(), pg.size()
    t = torch.ones(10)
    pg.allreduce(t, timeout=T).wait()
    assert torch.equal(t, torch.full_like(t, size))
    pg.barrier(timeout=T).wait()
    t = torch.full((10,), rank)
    pg.broadcast(t, root=0, timeout=T).wait()
    assert torch.equal(t, torch.zeros_like(t))
    t = torch.full((10,), label + 1, dtype=torch.float32)
    out = [torch.zeros(10) for _ in range(size)]
    pg.allgather(out, t, timeout=T).wait()
    labels = [int(o[0].item()) - 1 for o in out]
    assert labels[rank] == label and len(set(labels)) == size
    out = [torch.zeros(10) for _ in range(size)] if rank == 0 else []
    pg.gather(out, t, root=0, timeout=T).wait()
    if rank == 0:
        assert [int(o[0].item()) - 1 for o in out] == labels
    inputs = [torch.full((10,), i + 1.0) for i in range(size)] if rank == 0 else []
    out = torch.zeros(10)
    pg.scatter(out, inputs, root=0, timeout=T).wait()
    assert torch.equal(out, torch.full_like(out, rank + 1))
    t = torch.ones(10)
    pg.reduce(t, root=0, op=dist2.ReduceOp.SUM, timeout=T).wait()
    if rank == 0:
        assert torch.equal(t, torch.full_like(t, size))
    inputs = [torch.full((10,), i + 1.0) for i in range(size)]
    out = torch.zeros(10)
    pg.reduce_scatter(out, inputs, op=dist2.ReduceOp.SUM, timeout=T).wait()
    assert torch.equal(out, torch.full_like(out, size * (rank + 1)))
    out = torch.zeros(size * 10)
    inp = torch.full((size * 10,), rank + 1.0)
    splits = [10] * size
    pg.all_to_all_single(out, inp, splits, splits, timeout=T).wait()
    assert torch.equal(out, torch.arange(1.0, size + 1).repeat_interleave(10))
    outs = [torch.zeros(2) for _ in range(size)]
    pg.alltoall(outs, [torch.full((2,), 10.0 * rank + j) for j in range(size)]).wait()
    assert [o[0].item() for o in outs] == [10.0 * j + rank for j in range(size)]
    if size > 1:  # a ring of send/recv
        right, left = (rank + 1) % size, (rank - 1) % size
        received = torch.zeros(3)
        send = pg.send([torch.full((3,), float(rank))], right, 7)
        pg.recv([received], left, 7).wait()
        send.wait()
        assert torch.equal(received, torch.full((3,), float(left)))


def collectives(ctx):
    pg = dist2.new_group(backend="gloo", timeout=timedelta(seconds=60), device="cpu")
    assert (pg.rank(), pg.size()) == (ctx.rank, ctx.world_size)
    run_collectives(pg, ctx.rank)
    seq = pg._get_sequence_number_for_group()
    pg.barrier(timeout=T).wait()  # rank 0 hosts the env:// store: nobody leaves early
    pg.shutdown()
    return seq


@world_sizes(2, 3)
def test_collectives(world_size):
    numbers = spawn(collectives, world_size, timeout=120)
    assert len(set(numbers)) == 1 and numbers[0] >= 10  # every rank counted the same ops


def group_split(ctx):
    rank, size = ctx.rank, ctx.world_size
    group = dist2.new_group(backend="gloo", timeout=timedelta(seconds=60), device="cpu")
    subgroup = group.split_group([0], timeout=timedelta(seconds=30), group_name="subgroup_1")
    if rank == 0:
        assert subgroup is not None and subgroup.size() == 1
        backend = subgroup._get_backend(torch.device("cpu"))
        assert backend.options._timeout == timedelta(seconds=30)
        assert subgroup.group_name == "subgroup_1"
    else:
        assert subgroup is None
    # the last ranks, given unsorted: group ranks follow the sorted order; defaults name it
    tail = list(range(size - 1, 0, -1)) if size > 2 else [1, 0]
    split = group.split_group(tail)
    members = sorted(tail)
    result = None
    if rank in members:
        result = _check_split(split, members, rank)
    else:
        assert split is None
    group.barrier(timeout=T).wait()  # rank 0 hosts the store: it leaves last
    group.shutdown()
    return result


def _check_split(split, members, rank):
    assert split.size() == len(members) and split.rank() == members.index(rank)
    assert split.group_name == f":split:{members}"
    assert split.options.timeout == timedelta(seconds=60)  # the parent's
    assert list(split.options.global_ranks_in_group) == members
    run_collectives(split, split.rank())
    # a split of the split: global ranks carry through
    inner = split.split_group([len(members) - 1], group_desc="inner")
    if inner is not None:
        assert list(inner.options.global_ranks_in_group) == [members[-1]]
        assert inner.group_desc == "inner"
    return split.rank(), split.size()


@world_sizes(2, 3)
def test_group_split(world_size):
    results = spawn(group_split, world_size, timeout=120)
    if world_size == 2:
        assert results == [(0, 2), (1, 2)]
    else:
        assert results == [None, (0, 2), (1, 2)]


def remote_group_merge(ctx):
    rank, size = ctx.rank, ctx.world_size
    group = dist2.new_group(backend="gloo", timeout=timedelta(seconds=60), device="cpu")
    singles = [group.split_group([r], timeout=timedelta(seconds=30)) for r in range(size)]
    mine = singles[rank]
    assert mine is not None and mine.size() == 1
    assert [s is None for s in singles].count(True) == size - 1
    merged = mine.merge_remote_group(ctx.store, size, timedelta(seconds=40), "merged_pg")
    assert merged.size() == size
    assert merged._get_backend(torch.device("cpu")).options._timeout == timedelta(seconds=40)
    assert merged.group_name == "merged_pg"
    assert merged.group_desc == f":split:{rank}:merge"  # the parent's desc, as torch
    run_collectives(merged, rank)  # merged ranks are in arrival order; labels are global ranks
    t = torch.tensor([float(rank)])
    merged.allreduce(t).wait()
    assert t.item() == sum(range(size))
    result = merged.rank()
    group.barrier(timeout=T).wait()  # rank 0 hosts the env:// store: it leaves last
    group.shutdown()
    merged.shutdown()
    return result


@world_sizes(2, 3)
def test_remote_group_merge(world_size):
    ranks = spawn(remote_group_merge, world_size, timeout=120)
    assert sorted(ranks) == list(range(world_size))
