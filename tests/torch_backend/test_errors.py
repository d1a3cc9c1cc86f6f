"""The torch backend's Work, sequence numbers, errors, timeouts, DETAIL checks and teardown.

Errors surface as torch's own classes (``torch.distributed.DistBackendError`` ...), so code
written for torch catches them; messages are pyc10d's (a timeout says "Timed out waiting",
a dead peer is named).
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import pyc10d.testing
from pyc10d.testing import spawn, world_sizes
from pyc10d.torch_backend import BACKEND_NAME
from pyc10d.torch_backend.work import TorchWork

TIMEOUT = 90


def _init(ctx, seconds: float = 60) -> None:
    dist.init_process_group(
        BACKEND_NAME,
        init_method=ctx.init_method,
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=timedelta(seconds=seconds),
    )


def work_api(ctx) -> list[float]:
    """Work objects are torch Works; futures hold the outputs; sequence numbers advance."""
    _init(ctx)
    world = dist.group.WORLD
    before = world._get_sequence_number_for_group()
    t = torch.tensor([ctx.rank + 1.0])
    work = dist.all_reduce(t, async_op=True)
    assert isinstance(work, dist.Work) and isinstance(work, TorchWork)
    future = work.get_future()
    assert work.wait() is True
    assert work.is_completed() and work.is_success() and work.exception() is None
    assert future.wait()[0] is t  # the future holds the very output tensor, not a copy
    assert work.result() == [t]
    assert world._get_sequence_number_for_group() == before + 1
    chained = (
        dist.all_reduce(torch.ones(1), async_op=True).get_future().then(lambda f: f.value()[0] * 10)
    )
    values = [t.item(), chained.wait().item()]
    dist.barrier()
    values.append(float(world._get_sequence_number_for_group() - before))
    dist.destroy_process_group()
    return values


@world_sizes(2, 3)
def test_work_future_and_sequence_numbers(world_size):
    """Work, futures and sequence numbers behave as on Gloo."""
    n = world_size
    assert spawn(work_api, n, timeout=TIMEOUT) == [[n * (n + 1) / 2, n * 10.0, 3.0]] * n


def timeouts(ctx) -> str:
    """wait(timeout) is bounded while the op goes on; a collective one rank skips times out as a
    DistBackendError naming the time."""
    _init(ctx, seconds=2)
    store = ctx.store
    if ctx.rank == 0:
        work = dist.all_gather_into_tensor(torch.empty(2), torch.ones(1), async_op=True)
        with pytest.raises(RuntimeError, match="Timed out waiting 100ms"):
            work.wait(timedelta(milliseconds=100))
        store.set("gave_up", b"1")
        work.wait()
    else:
        store.wait(["gave_up"])
        dist.all_gather_into_tensor(torch.empty(2), torch.ones(1))
    if ctx.rank == 0:
        start = time.monotonic()
        with pytest.raises(dist.DistBackendError, match="Timed out waiting 2000ms"):
            dist.all_reduce(torch.ones(1))
        assert time.monotonic() - start < 15
        store.set("timed_out", b"1")
    else:
        store.wait(["timed_out"])
    dist.destroy_process_group()
    return "ok"


def test_timeouts_raise_torch_errors():
    """Timeouts raise torch's DistBackendError with the time in the message."""
    assert spawn(timeouts, 2, timeout=TIMEOUT) == ["ok", "ok"]


def dead_peer(ctx) -> str:
    """A peer that exits is named in the error of the next collective, well before the timeout."""
    _init(ctx, seconds=60)
    dist.barrier()
    victim = ctx.world_size - 1
    if ctx.rank == victim:
        os._exit(0)
    start = time.monotonic()
    with pytest.raises(dist.DistBackendError, match=f"rank {victim}"):
        dist.all_reduce(torch.ones(1))
    assert time.monotonic() - start < 20
    dist.destroy_process_group()
    return "survived"


@world_sizes(2, 3)
def test_dead_peer_named(world_size):
    """Survivors get an error naming the dead rank, not a hang."""
    with pytest.raises(pyc10d.testing.RankFailedError) as info:
        spawn(dead_peer, world_size, timeout=TIMEOUT)
    assert set(info.value.failures) == {world_size - 1}


def detail_mismatch(ctx) -> str:
    """Under DETAIL, ranks running different collectives all raise torch's mismatch error."""
    dist.set_debug_level(dist.DebugLevel.DETAIL)
    _init(ctx)
    t = torch.ones(2 + ctx.rank)  # shapes differ
    with pytest.raises(RuntimeError, match="Detected mismatch between collectives on ranks"):
        dist.all_reduce(t)
    if ctx.rank == 0:
        with pytest.raises(RuntimeError, match="Op type: ALLREDUCE vs BROADCAST"):
            dist.all_reduce(torch.ones(1))
    else:
        with pytest.raises(RuntimeError, match="Op type: BROADCAST vs ALLREDUCE"):
            dist.broadcast(torch.ones(1), src=0)
    u = torch.ones(1)
    dist.all_reduce(u)  # matched calls still work
    assert u.item() == ctx.world_size
    dist.destroy_process_group()
    return "ok"


@world_sizes(2, 3)
def test_detail_catches_mismatches(world_size):
    """TORCH_DISTRIBUTED_DEBUG=DETAIL's checks run inside the pyc10d group."""
    assert spawn(detail_mismatch, world_size, timeout=TIMEOUT) == ["ok"] * world_size


def abort_and_reinit(ctx) -> float:
    """abort fails a pending op at once; destroy + init again gives a working group."""
    _init(ctx)
    if ctx.rank == 0:
        pending = dist.irecv(torch.empty(1), src=1, tag=99)  # never sent
        start = time.monotonic()
        dist.distributed_c10d._abort_process_group()
        with pytest.raises(RuntimeError):
            pending.wait()
        assert time.monotonic() - start < 10
    else:
        dist.group.WORLD.shutdown()
        dist.destroy_process_group()
    dist.init_process_group(
        BACKEND_NAME,
        init_method=f"file://{ctx.path('second')}",
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    t = torch.tensor([1.0])
    dist.all_reduce(t)
    dist.destroy_process_group()
    return t.item()


def test_abort_shutdown_and_reinit():
    """abort and shutdown release the group; a new one can be made after either."""
    assert spawn(abort_and_reinit, 2, timeout=TIMEOUT) == [2.0, 2.0]


def bad_input(ctx) -> float:
    """Bad arguments raise before anything is sent; the group stays usable."""
    _init(ctx)
    with pytest.raises(RuntimeError, match="invalid root rank: 7"):
        _bad_broadcast()
    with pytest.raises(RuntimeError, match="No backend type associated with device type meta"):
        dist.all_reduce(torch.empty(2, device="meta"))
    with pytest.raises(RuntimeError, match="invalid output tensor list at index 0"):
        dist.all_gather([torch.empty(1)], torch.ones(1))  # one output for two ranks
    t = torch.ones(1)
    dist.all_reduce(t)
    dist.destroy_process_group()
    return t.item()


def _bad_broadcast() -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank = 7
    dist.group.WORLD.broadcast([torch.ones(1)], opts)


def test_bad_input_keeps_group_usable():
    """torch-style argument errors; the next collective works."""
    assert spawn(bad_input, 2, timeout=TIMEOUT) == [2.0, 2.0]


def monitored(ctx) -> str:
    """The group's monitored_barrier: rank 0 names a rank that did not arrive."""
    _init(ctx)
    world = dist.group.WORLD
    world.monitored_barrier(timedelta(seconds=30))  # everyone arrives
    late = ctx.world_size - 1
    if ctx.rank == 0:
        with pytest.raises(RuntimeError, match=f"Rank {late} failed to pass monitoredBarrier"):
            world.monitored_barrier(timedelta(milliseconds=300))
        ctx.store.set("reported", b"1")
    elif ctx.rank == late:
        ctx.store.wait(["reported"])
    else:
        with pytest.raises(RuntimeError, match="received errors while waiting for send/recv"):
            world.monitored_barrier(timedelta(milliseconds=300))
    with pytest.raises(ValueError, match="only implemented for GLOO"):
        dist.monitored_barrier()  # torch's function admits Gloo groups only, by name
    dist.destroy_process_group()
    return "ok"


@world_sizes(2, 3)
def test_monitored_barrier_on_the_group(world_size):
    """ProcessGroupPyc10d.monitored_barrier behaves as Gloo's; torch's wrapper refuses by name."""
    assert spawn(monitored, world_size, timeout=TIMEOUT) == ["ok"] * world_size
