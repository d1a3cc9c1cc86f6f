"""Small-operation fast paths: no thread hand-off when the caller waits at once.

The engine queues an operation *deferred*: ``wait()`` runs it in the waiting thread when nothing
queued before it still waits (else the workers start those first); ``get_future()``,
``is_completed()`` and ``exception()`` make a worker start it at once; otherwise a worker starts it
after ``engine.DEFER_S``. A sync collective with nothing pending runs in the caller's thread
without touching the engine. The module API's fast paths (allreduce, broadcast,
all_gather_into_tensor, reduce_scatter_tensor, all_to_all_single) give the general path's results,
and leave anything unusual to it.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

import pyc10d as dist
from pyc10d.api.state import default_group
from pyc10d.process_group import Work
from pyc10d.process_group import engine as engine_mod
from pyc10d.process_group.engine import Engine
from pyc10d.testing import spawn, world_sizes

TIMEOUT = 120
BOUND_S = 30.0  # an upper bound for things that must happen (never a synchronisation sleep)


def _recording_run(log: list, name: str):
    def run() -> str:
        log.append((name, threading.current_thread()))
        return name

    return run


@pytest.fixture
def engine():
    eng = Engine(2, "test-deferred")
    yield eng
    eng.shutdown()


@pytest.fixture
def no_timer(monkeypatch):
    """Make the timer fallback too slow to matter: only waits and rushes start operations."""
    monkeypatch.setattr(engine_mod, "DEFER_S", 3600.0)


def test_wait_runs_deferred_operation_in_the_caller(engine, no_timer):
    log: list = []
    work = engine.submit(Work("op", 1, []), _recording_run(log, "a"), wake=False)
    assert not work._done
    work.wait()
    assert log == [("a", threading.current_thread())]


def test_wait_behind_queued_operations_has_workers_start_them_in_order(engine, no_timer):
    """Earlier operations are never run in the waiting thread: each must keep its own deadline
    (a short timeout on a later call must not become theirs)."""
    log: list = []
    works = [
        engine.submit(Work("op", i, []), _recording_run(log, str(i)), wake=False) for i in range(3)
    ]
    works[2].wait()
    assert [name for name, _ in log] == ["0", "1", "2"]
    assert all(engine.is_worker(thread) for _, thread in log)
    assert all(w.is_completed() for w in works)


@pytest.mark.parametrize("look", ["get_future", "is_completed", "exception"])
def test_looking_at_a_deferred_operation_starts_it_on_a_worker(engine, no_timer, look):
    log: list = []
    done = threading.Event()
    work = engine.submit(Work("op", 1, []), _recording_run(log, "a"), wake=False)
    getattr(work, look)()
    work._future_of().add_done_callback(lambda _: done.set())
    assert done.wait(BOUND_S), f"{look}() did not start the deferred operation"
    assert log[0][1] is not threading.current_thread()
    assert engine.is_worker(log[0][1])


def test_timer_starts_a_deferred_operation_nobody_waits_for(engine, monkeypatch):
    monkeypatch.setattr(engine_mod, "DEFER_S", 0.001)
    log: list = []
    work = engine.submit(Work("op", 1, []), _recording_run(log, "a"), wake=False)
    assert work._wait_done(BOUND_S), "the timer fallback never started the operation"
    assert engine.is_worker(log[0][1])


def test_shutdown_fails_deferred_operations(no_timer):
    eng = Engine(1, "test-deferred-shutdown")
    work = eng.submit(Work("op", 1, []), lambda: None, wake=False)
    eng.shutdown()
    with pytest.raises(dist.DistBackendError, match="shut down"):
        work.wait()


# -- through a group ------------------------------------------------------------------------------
def _no_engine(ctx) -> list:
    """A sync collective with nothing pending never reaches the engine's queue; one issued
    after pending async ones does, and runs after them."""
    dist.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    pg = default_group()
    submitted: list[str] = []
    real_submit = pg._engine.submit

    def spy(work, run, wake=True):
        submitted.append(work.op_type)
        return real_submit(work, run, wake)

    pg._engine.submit = spy
    t = torch.full((3,), float(ctx.rank + 1))
    dist.all_reduce(t)
    dist.broadcast(t, src=0)
    inline = list(submitted)
    a = torch.ones(2) * (ctx.rank + 1)
    b = torch.ones(2) * (ctx.rank + 1)
    work = dist.all_reduce(a, async_op=True)
    dist.all_reduce(b, op=dist.ReduceOp.MAX)  # after the pending one: queued behind it
    work.wait()
    dist.destroy_process_group()
    return [inline, submitted, a.tolist(), b.tolist(), t.tolist()]


@world_sizes(2, 3)
def test_sync_collectives_skip_the_engine(world_size):
    total = sum(range(1, world_size + 1))
    for inline, submitted, a, b, t in spawn(_no_engine, world_size, timeout=TIMEOUT):
        assert inline == []
        assert submitted == ["allreduce", "allreduce"]
        assert a == [float(total)] * 2
        assert b == [float(world_size)] * 2
        assert t == [float(total)] * 3


def _progress_without_wait(ctx) -> list:
    """Rank 0 only polls is_completed() on its async allreduce (never waits); the others wait.
    With the timer fallback disabled, the poll alone must start it everywhere."""
    engine_mod.DEFER_S = 3600.0
    dist.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    t = torch.ones(4)
    work = dist.all_reduce(t, async_op=True)
    if ctx.rank == 0:
        while not work.is_completed():
            pass
        done = [work.is_success()]
    else:
        done = [work.wait()]
    future_tensor = torch.ones(2)
    future = dist.all_reduce(future_tensor, async_op=True).get_future()
    result = future.wait()  # a torch future's wait: no pyc10d inline run
    dist.destroy_process_group()
    return [done, t.tolist(), [r.tolist() for r in result]]


@world_sizes(2, 3)
def test_async_work_progresses_without_wait(world_size):
    for done, t, result in spawn(_progress_without_wait, world_size, timeout=TIMEOUT):
        assert done == [True]
        assert t == [float(world_size)] * 4
        assert result == [[float(world_size)] * 2]


def _fast_paths(ctx) -> dict:
    """Each fast-path collective against the same call through the group's general path."""
    dist.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    pg = default_group()
    rank, size = ctx.rank, ctx.world_size
    out: dict = {}
    for dtype in (torch.float32, torch.int64):
        base = (torch.arange(size * 2, dtype=dtype) + 10 * rank).reshape(size, 2)
        for op in (dist.ReduceOp.SUM, dist.ReduceOp.MAX, dist.ReduceOp.AVG):
            if op is dist.ReduceOp.AVG and not dtype.is_floating_point:
                continue
            fast = base.clone()
            dist.all_reduce(fast, op=op)
            slow = base.clone()
            opts = dist.AllreduceOptions()
            opts.reduceOp = op
            pg.allreduce([slow], opts).wait()
            out[f"allreduce {dtype} {op}"] = (fast.tolist(), slow.tolist())
            rs_fast = torch.empty(2, dtype=dtype)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                dist.reduce_scatter_tensor(rs_fast, base, op=op)
            rs_slow = torch.empty(2, dtype=dtype)
            rs_opts = dist.ReduceScatterOptions()
            rs_opts.reduceOp = op
            pg._reduce_scatter_base(rs_slow, base, rs_opts).wait()
            out[f"reduce_scatter {dtype} {op}"] = (rs_fast.tolist(), rs_slow.tolist())
        bc = base.clone()
        dist.broadcast(bc, src=size - 1)
        source = (torch.arange(size * 2, dtype=dtype) + 10 * (size - 1)).reshape(size, 2)
        out[f"broadcast {dtype}"] = (bc.tolist(), source.tolist())
        gathered = torch.empty(size, 2, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            dist.all_gather_into_tensor(gathered, base[0])
        expected = torch.stack([(torch.arange(2, dtype=dtype) + 10 * r) for r in range(size)])
        out[f"allgather {dtype}"] = (gathered.tolist(), expected.tolist())
        a2a = torch.empty_like(base)
        work = dist.all_to_all_single(a2a, base, async_op=True)
        work.wait()
        a2a_slow = torch.empty_like(base)
        pg.alltoall_base(a2a_slow, base, [], []).wait()
        out[f"alltoall {dtype}"] = (a2a.tolist(), a2a_slow.tolist())
    # unusual inputs leave the fast paths and get the general path's errors
    errors = []
    for call in (
        lambda: dist.all_to_all_single(torch.empty(size, 2), torch.ones(2, size).t()),
        lambda: dist.broadcast(torch.ones(2), src=size),
        lambda: dist.all_reduce(torch.ones(2, dtype=torch.int32), op=dist.ReduceOp.AVG),
        lambda: dist.all_reduce(torch.ones(2, dtype=torch.complex64), op=dist.ReduceOp.MAX),
    ):
        try:
            call()
        except (ValueError, RuntimeError) as exc:
            errors.append(type(exc).__name__)
    ok = torch.ones(3)
    dist.all_reduce(ok)  # the group is still usable after the refused calls
    out["after errors"] = (ok.tolist(), [float(size)] * 3)
    dist.destroy_process_group()
    return {"results": out, "errors": errors}


@world_sizes(2, 3)
def test_fast_paths_match_the_general_path(world_size):
    for result in spawn(_fast_paths, world_size, timeout=TIMEOUT):
        for name, (fast, slow) in result["results"].items():
            assert fast == slow, name
        assert result["errors"] == ["ValueError", "RuntimeError", "RuntimeError", "ValueError"]
