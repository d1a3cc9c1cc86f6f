"""``monitored_barrier`` and the debug levels: env parsing and DETAIL's collective check.

Spawned runs: monitored barriers that pass and fail (a rank that never arrives) at world sizes 2
and 3, with the group still usable afterwards; DETAIL catching shape, dtype and op mismatches on
every rank. The rest runs in this process (env parsing, argument checks on a 1-rank group).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from datetime import timedelta

import pytest
import torch

import pyc10d as dist
from pyc10d.api import debug
from pyc10d.testing import spawn, world_sizes

TIMEOUT = 90
MISMATCH = "Detected mismatch between collectives on ranks"


def _init(ctx) -> None:
    dist.init_process_group(
        backend="gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )


def _allreduce_ok(group=None) -> None:
    """The group still runs collectives: an allreduce of ones gives the group size."""
    pg = dist.group.WORLD if group is None else group
    t = torch.ones(3)
    pg.allreduce([t]).wait()
    assert t.tolist() == [float(pg.size())] * 3


# -- monitored_barrier ------------------------------------------------------------------------
def monitored_barriers(ctx) -> str:
    _init(ctx)
    rank, n = ctx.rank, ctx.world_size
    store = ctx.store
    # every rank arrives: passes, with and without wait_all_ranks, repeatedly
    dist.monitored_barrier(timeout=timedelta(seconds=30))
    dist.monitored_barrier(timeout=timedelta(seconds=30), wait_all_ranks=True)
    dist.monitored_barrier()
    if n == 3:  # a subgroup without rank 0: group rank 0 is global rank 1
        sub = dist.new_group([1, 2])
        if rank == 0:
            with pytest.warns(UserWarning, match="does not belong to the given group"):
                dist.monitored_barrier(sub)
        else:
            dist.monitored_barrier(sub, timedelta(seconds=30))
            dist.monitored_barrier(sub, timedelta(seconds=30), wait_all_ranks=True)

    # rank 1 never arrives: rank 0 names it; the ranks that did arrive fail too
    if rank == 0:
        with pytest.raises(RuntimeError) as info:
            dist.monitored_barrier(timeout=timedelta(milliseconds=500))
        assert str(info.value) == "[Rank 0]: Rank 1 failed to pass monitoredBarrier in 500 ms"
        store.set("checked", "1")
    elif rank == 1:
        store.wait(["checked"])
    else:
        with pytest.raises(RuntimeError, match="Rank 2 successfully reached monitoredBarrier, but"):
            dist.monitored_barrier(timeout=timedelta(seconds=30))
    _allreduce_ok()  # the group still works on every rank

    if n == 3:  # two ranks missing: wait_all_ranks names both (a float timeout warns)
        if rank == 0:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with pytest.raises(RuntimeError) as info:
                    dist.monitored_barrier(timeout=0.3, wait_all_ranks=True)
            assert (
                str(info.value) == "[Rank 0]: Ranks 1, 2 failed to pass monitoredBarrier in 300 ms"
            )
            assert any("specify timeout arg as a timedelta" in str(w.message) for w in caught)
            with pytest.raises(
                RuntimeError, match="Rank 0 timed out in monitoredBarrier after 0 ms"
            ):
                dist.monitored_barrier(timeout=timedelta(0))
            store.set("checked2", "1")
        else:
            store.wait(["checked2"])
        _allreduce_ok()
    dist.destroy_process_group()
    return "ok"


@world_sizes(2, 3)
def test_monitored_barrier(world_size):
    assert spawn(monitored_barriers, world_size, timeout=TIMEOUT) == ["ok"] * world_size


def test_monitored_barrier_single_rank_and_arguments():
    dist.init_process_group(store=dist.HashStore(), rank=0, world_size=1)
    try:
        dist.monitored_barrier()
        dist.monitored_barrier(dist.group.WORLD, timedelta(seconds=1), wait_all_ranks=True)
        with pytest.raises(TypeError, match=r"datetime\.timedelta"):
            dist.monitored_barrier(timeout=5)
        with pytest.warns(UserWarning, match="timedelta"):
            dist.monitored_barrier(timeout=1.0)
    finally:
        dist.destroy_process_group()


# -- debug levels -----------------------------------------------------------------------------
@pytest.fixture
def restore_level():
    level = dist.get_debug_level()
    yield
    dist.set_debug_level(level)


def test_debug_level_from_env(monkeypatch, restore_level):
    for var in debug.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    dist.set_debug_level_from_env()
    assert dist.get_debug_level() is dist.DebugLevel.OFF
    monkeypatch.setenv("TORCH_DISTRIBUTED_DEBUG", "Info")
    dist.set_debug_level_from_env()
    assert dist.get_debug_level() is dist.DebugLevel.INFO
    monkeypatch.setenv("PYC10D_DEBUG", "detail")  # ours wins over torch's
    dist.set_debug_level_from_env()
    assert dist.get_debug_level() is dist.DebugLevel.DETAIL
    monkeypatch.setenv("PYC10D_DEBUG", "loud")
    with pytest.raises(ValueError, match=r"PYC10D_DEBUG must be OFF, INFO, or DETAIL.*'loud'"):
        dist.set_debug_level_from_env()
    monkeypatch.setenv("PYC10D_DEBUG", "")
    monkeypatch.setenv("TORCH_DISTRIBUTED_DEBUG", "verbose")
    with pytest.raises(ValueError, match=r"TORCH_DISTRIBUTED_DEBUG must be .*'verbose'"):
        dist.set_debug_level_from_env()


def test_set_debug_level(restore_level):
    import torch.distributed as tdist

    assert [m.name for m in dist.DebugLevel] == ["OFF", "INFO", "DETAIL"]
    assert int(dist.DebugLevel.DETAIL) == 2
    dist.set_debug_level(dist.DebugLevel.INFO)
    assert dist.get_debug_level() is dist.DebugLevel.INFO
    dist.set_debug_level(tdist.DebugLevel.DETAIL)  # torch's enum is understood
    assert dist.get_debug_level() is dist.DebugLevel.DETAIL
    with pytest.raises(TypeError, match="expects a DebugLevel"):
        dist.set_debug_level("DETAIL")


def test_debug_level_at_import():
    env = {k: v for k, v in os.environ.items() if k not in debug.ENV_VARS}
    code = "import pyc10d; print(pyc10d.get_debug_level().name)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "TORCH_DISTRIBUTED_DEBUG": "detail"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "DETAIL"


# -- DETAIL's collective check ----------------------------------------------------------------
def _mismatch(pg, op_name: str, tensors: list) -> str:
    with pytest.raises(RuntimeError, match=MISMATCH) as info:
        debug.check_before_collective(pg, op_name, tensors)
    return str(info.value)


def detail_checks(ctx) -> str:
    _init(ctx)
    rank, n = ctx.rank, ctx.world_size
    pg = dist.group.WORLD
    dist.set_debug_level(dist.DebugLevel.OFF)  # whatever the environment says
    # OFF: nothing is exchanged
    seq = pg._get_sequence_number_for_group()
    debug.check_before_collective(pg, "all_reduce", [torch.ones(rank + 1)])
    assert pg._get_sequence_number_for_group() == seq

    dist.set_debug_level(dist.DebugLevel.DETAIL)
    debug.check_before_collective(pg, "all_reduce", [torch.ones(4)])
    debug.check_before_collective(pg, "barrier", [])
    # every rank learns who differs from it: rank 1 against rank 0, the others against rank 1
    other = 0 if rank == 1 else 1
    message = _mismatch(pg, "all_reduce", [torch.ones(5 if rank == 1 else 4)])
    assert f"Rank {rank} is running collective: CollectiveFingerPrint(" in message
    assert f"but Rank {other} is running collective: CollectiveFingerPrint(" in message
    assert "OpType=ALLREDUCE, TensorShape=[" in message
    mine, theirs = ("[[5]]", "[[4]]") if rank == 1 else ("[[4]]", "[[5]]")
    assert f"Tensor Tensor shapes: {mine} vs {theirs}" in message
    assert "Op type" not in message and "dtypes" not in message

    message = _mismatch(pg, "broadcast" if rank == 0 else "all_reduce", [torch.ones(2)])
    other = 1 if rank == 0 else 0
    assert f"Rank {rank} is running collective" in message and f"but Rank {other}" in message
    ops = ("BROADCAST", "ALLREDUCE") if rank == 0 else ("ALLREDUCE", "BROADCAST")
    assert f"Op type: {ops[0]} vs {ops[1]}" in message

    dtype = torch.float64 if rank == n - 1 else torch.float32
    message = _mismatch(pg, "all_gather", [torch.ones(2, dtype=dtype)])
    assert "TensorDtypes=[Double]" in message and "TensorDtypes=[Float]" in message
    assert "Tensor Tensor dtypes:" in message

    _allreduce_ok()  # after the errors the group is still in step
    debug.check_before_collective(pg, "reduce_scatter", [[torch.ones(2, 2)], torch.ones(2)])
    dist.set_debug_level(dist.DebugLevel.OFF)
    dist.destroy_process_group()
    return "ok"


@world_sizes(2, 3)
def test_detail_mismatch(world_size):
    assert spawn(detail_checks, world_size, timeout=TIMEOUT) == ["ok"] * world_size


def test_detail_single_rank_is_a_no_op(restore_level):
    dist.init_process_group(store=dist.HashStore(), rank=0, world_size=1)
    try:
        dist.set_debug_level(dist.DebugLevel.DETAIL)
        debug.check_before_collective(dist.group.WORLD, "all_reduce", [torch.ones(2)])
        debug.check_before_collective(None, "all_reduce", [torch.ones(2)])
    finally:
        dist.destroy_process_group()
