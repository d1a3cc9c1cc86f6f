"""``ProcessGroup`` over the shared-memory arena: timeouts, dead and departed peers, shutdown,
cleanup, transport selection, issue order and groups spanning hosts (the arena itself:
tests/transport/shm/test_arena.py; its algorithms: tests/collectives/test_shm.py).

Rank bodies are module-level functions: the ranks of ``spawn`` import this module by name. No
``pyc10d`` entry may be left in ``/dev/shm`` after any run.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
import torch

from pyc10d import ProcessGroup
from pyc10d.core.reduce_op import ReduceOp
from pyc10d.process_group import options as o
from pyc10d.store import HashStore
from pyc10d.testing import RankFailedError, world_sizes
from pyc10d.transport.factory import ENV, transport_mode

from tests.helpers.pg import make_pg
from tests.helpers.shm import MiB, run, same, shm_entries


# -- through ProcessGroup --------------------------------------------------------------------
def _timeout_opts(cls, seconds: float):
    opts = cls()
    opts.timeout = timedelta(seconds=seconds)
    return opts


def pg_late_rank(ctx, n: int) -> str:
    """ProcessGroup: ranks but 1 time out on a large allreduce; 1 joins late; the group works."""
    pg, rank, world = make_pg(ctx), ctx.rank, ctx.world_size
    assert pg._arena is not None
    outcome = "ok"
    if rank != 1:
        start = time.monotonic()
        work = pg.allreduce([torch.ones(n)], _timeout_opts(o.AllreduceOptions, 0.5))
        with pytest.raises(RuntimeError) as info:
            work.wait()
        assert "Timed out waiting 500ms for rank(s) 1 in shared-memory allreduce" in str(info.value)
        assert time.monotonic() - start < 5
        ctx.store.set(f"timed-out/{rank}", "1")
    else:
        others = [f"timed-out/{r}" for r in range(world) if r != 1]
        ctx.store.wait(others, timedelta(seconds=30))
        late = torch.ones(n)
        try:  # it may time out; if it returns, its result must be right
            pg.allreduce([late], _timeout_opts(o.AllreduceOptions, 0.5)).wait()
            same(late, torch.full((n,), float(world)), "late allreduce")
        except RuntimeError:  # a timeout, or the others' abandoning it noticed
            outcome = "late one failed"
    # every rank issues the next ones: they work
    base = torch.arange(n, dtype=torch.float32)
    t = base + rank
    pg.allreduce([t]).wait()
    same(t, base * world + sum(range(world)), "allreduce after the timeout")
    outs = [torch.empty(1000) for _ in range(world)]
    pg.allgather([outs], [torch.full((1000,), float(rank))]).wait()
    for r in range(world):
        same(outs[r], torch.full((1000,), float(r)), "allgather after the timeout")
    t = base + rank
    pg.broadcast([t], root=world - 1).wait()
    same(t, base + world - 1, "broadcast after the timeout")
    pg.barrier().wait()
    pg.shutdown()
    return outcome


@world_sizes(2, 3)
def test_pg_timeout_on_large_allreduce_leaves_group_usable(world_size):
    outcomes = run(pg_late_rank, world_size, 2 * MiB)  # 8 MiB of float32: two rounds
    assert outcomes[0] == "ok" and outcomes[2:] == ["ok"] * (world_size - 2)


def pg_late_allgather(ctx) -> str:
    """ProcessGroup: after a first allgather, rank 1 is late for a second one (3 rounds of the
    default slot) that rank 0 timed out on; both then issue a third one."""
    pg, rank = make_pg(ctx, timeout=2), ctx.rank
    assert pg._arena is not None
    n = 3 * MiB  # 12 MiB of float32 per rank: three rounds of the default slot

    def allgather(value: float, seconds: float | None = None) -> list:
        outs = [torch.zeros(n) for _ in range(2)]
        opts = _timeout_opts(o.AllgatherOptions, seconds) if seconds else None
        pg.allgather([outs], [torch.full((n,), value)], opts).wait()
        return [t.unique().tolist() for t in outs]

    assert allgather(10.0 + rank) == [[10.0], [11.0]]
    if rank == 0:
        with pytest.raises(RuntimeError, match="Timed out waiting 300ms for rank"):
            allgather(20.0, 0.3)
        ctx.store.set("timed-out", "1")
    else:
        ctx.store.wait(["timed-out"], timedelta(seconds=30))
        try:  # it may fail; if it returns, rank 0's part must be rank 0's input of #2
            late = allgather(21.0, 1)
        except RuntimeError:
            pass
        else:
            assert late == [[20.0], [21.0]], f"the late allgather returned {late}"
    assert allgather(30.0 + rank) == [[30.0], [31.0]]  # both issue #3: it works
    pg.shutdown()
    return "ok"


def test_pg_late_rank_on_multi_round_allgather():
    run(pg_late_allgather, 2)


def pg_turn_timeout(ctx) -> str:
    """threads=2: on rank 1, #2 times out waiting for #1 (its turn), before entering the arena.
    Rank 0 runs #1, then #2, which rank 1 never joins: it must fail. #3, issued by both ranks,
    must work."""
    options = ProcessGroup.Options()
    options._timeout = timedelta(seconds=2)
    options.threads = 2
    pg, rank = ProcessGroup(ctx.store, ctx.rank, ctx.world_size, options), ctx.rank
    assert pg._arena is not None
    first = torch.ones(4)
    if rank == 1:
        work1 = pg.allreduce([first])  # waits for rank 0
        with pytest.raises(RuntimeError, match="issued before #2 to finish"):
            pg.allreduce([torch.ones(4)], _timeout_opts(o.AllreduceOptions, 0.3)).wait()
        ctx.store.set("go", "1")
        work1.wait()
    else:
        ctx.store.wait(["go"], timedelta(seconds=30))
        pg.allreduce([first]).wait()
        second = torch.ones(4)
        try:
            pg.allreduce([second], _timeout_opts(o.AllreduceOptions, 0.3)).wait()
        except RuntimeError as exc:  # rank 1 gave up on #2 (its turn timed out) and said so
            message = str(exc)
            assert "rank 1 gave up on collective #2 (it timed out there)" in message, exc
        else:  # 102 = 1 + rank 1's input of #3
            raise AssertionError(f"#2 returned {second.tolist()} though rank 1 never joined it")
    assert first.tolist() == [2.0] * 4
    t = torch.full((4,), 100.0 + rank)
    pg.allreduce([t]).wait()
    assert t.tolist() == [201.0] * 4
    pg.shutdown()
    return "ok"


def test_pg_collective_timing_out_before_its_turn_leaves_group_usable():
    run(pg_turn_timeout, 2)


def pg_alltoall_mixed_splits(ctx) -> list:
    """alltoall_base: rank 0 gives no split sizes, the others give equal ones explicitly."""
    pg, rank, world = make_pg(ctx, timeout=2), ctx.rank, ctx.world_size
    inp = torch.arange(2 * world, dtype=torch.float32) + 10 * rank
    out = torch.zeros(2 * world)
    splits = [] if rank == 0 else [2] * world
    pg.alltoall_base(out, inp, splits, splits).wait()
    pg.shutdown()
    return out.tolist()


def test_pg_alltoall_base_with_and_without_explicit_equal_splits():
    want = [[0.0, 1.0, 10.0, 11.0], [2.0, 3.0, 12.0, 13.0]]
    assert run(pg_alltoall_mixed_splits, 2) == want


def dead_peer(ctx, how: str) -> float:
    """Rank 1 dies while rank 0 (and, with 3 ranks, rank 1 itself) is in a large allreduce;
    rank 2 issues it after the death. Everyone left fails fast, naming rank 1."""
    pg, rank, world = make_pg(ctx, timeout=60), ctx.rank, ctx.world_size
    assert pg._arena is not None
    pg.barrier().wait()
    n = 2 * MiB  # 8 MiB of float32
    if rank == 2:
        ctx.store.wait(["dying"], timedelta(seconds=30))
        time.sleep(0.5)
    if rank == 1 and world == 2:  # does not take part
        ctx.store.wait(["issued/0"], timedelta(seconds=30))
    else:  # rank 1 with 3 ranks: in the collective, waiting for rank 2 like rank 0
        pending = pg.allreduce([torch.ones(n)])
        ctx.store.set(f"issued/{rank}", "1")
    if rank == 1:
        ctx.store.wait(["issued/0"], timedelta(seconds=30))
        time.sleep(0.3)  # rank 0 is waiting in the arena by now
        ctx.store.set("dying", "1")
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 1"):
        pending.wait()
    elapsed = time.monotonic() - start
    assert elapsed < 10, elapsed  # seen through the dead connection, not the 60 s timeout
    with pytest.raises(RuntimeError, match="rank 1"):
        pg.allreduce([torch.ones(4)]).wait()
    pg.shutdown()
    return elapsed


@world_sizes(2, 3)
@pytest.mark.parametrize("how", ["exit", "kill"])
def test_dead_peer_fails_arena_waits_fast(world_size, how):
    with pytest.raises(RankFailedError) as info:
        run(dead_peer, world_size, how)
    # only rank 1 failed (it died); the others passed their checks, well before the 60 s timeout
    assert set(info.value.failures) == {1}, str(info.value)
    assert "still running" not in str(info.value)  # none was killed in the harness's grace time


def pg_cleanup(ctx) -> str:
    pg, rank, world = make_pg(ctx), ctx.rank, ctx.world_size
    arena = pg._arena
    assert arena is not None
    pg.barrier().wait()  # every rank has built its arena by now
    assert shm_entries() == set()  # unlinked as soon as mapped, while in use
    t = torch.full((3 * MiB,), float(rank))  # 12 MiB: three rounds through the unlinked segments
    pg.allreduce([t]).wait()
    same(t, torch.full((3 * MiB,), float(sum(range(world)))), "allreduce")
    pg.shutdown()
    assert arena._closed
    with pytest.raises(RuntimeError):
        pg.allreduce([torch.ones(1)]).wait()
    return "ok"


@world_sizes(2, 3)
def test_pg_leaves_nothing_in_dev_shm(world_size):
    assert run(pg_cleanup, world_size) == ["ok"] * world_size  # run() compares /dev/shm


def abort_while_waiting(ctx) -> float:
    """Rank 0 aborts its group while its large allreduce waits for the others in the arena
    (``shutdown`` would let it finish first, within the group's timeout, as Gloo does)."""
    pg, rank = make_pg(ctx, timeout=60), ctx.rank
    assert pg._arena is not None
    pg.barrier().wait()
    if rank != 0:
        ctx.store.wait(["shut"], timedelta(seconds=30))
        pg.shutdown()
        return 0.0
    work = pg.allreduce([torch.ones(2 * MiB)])
    time.sleep(0.3)  # a late peer on purpose: rank 0 waits in the arena
    start = time.monotonic()
    pg.abort()
    with pytest.raises(RuntimeError):
        work.wait()
    elapsed = time.monotonic() - start
    ctx.store.set("shut", "1")
    return elapsed


@world_sizes(2, 3)
def test_abort_ends_a_collective_waiting_in_the_arena(world_size):
    elapsed = run(abort_while_waiting, world_size)
    assert elapsed[0] < 10, elapsed  # not the 60 s timeout


def peer_shut_down(ctx) -> str:
    """Rank 0 shuts its group down cleanly (and exits); the others' next collective must fail
    naming it, at once, as over TCP ("connection to rank 0 lost: it closed its transport")."""
    pg, rank = make_pg(ctx, timeout=3), ctx.rank
    assert pg._arena is not None
    pg.barrier().wait()
    if rank == 0:
        pg.shutdown()
        ctx.store.set("shut", "1")
        return "shut down"
    ctx.store.wait(["shut"], timedelta(seconds=30))
    time.sleep(0.3)
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        pg.allreduce([torch.ones(4)]).wait()
    elapsed = time.monotonic() - start
    assert "rank 0" in str(info.value) and elapsed < 1.5, (elapsed, str(info.value))
    pg.shutdown()
    return "failed"


@world_sizes(2, 3)
def test_collective_after_a_peer_shut_down_fails_fast(world_size):
    run(peer_shut_down, world_size)


# -- selection -----------------------------------------------------------------------------------
def transport_modes(ctx) -> list:
    arenas = []
    for mode in ("tcp", "auto", "shm", ""):
        os.environ[ENV] = mode
        pg = make_pg(ctx)
        arenas.append(None if pg._arena is None else type(pg._arena).__name__)
        t = torch.full((70_000,), float(ctx.rank + 1))
        pg.allreduce([t]).wait()
        same(t, torch.full((70_000,), float(sum(range(1, ctx.world_size + 1)))), mode)
        pg.shutdown()
    return arenas


@world_sizes(2, 3)
def test_transport_env_selects_the_arena(world_size):
    want = [None, "ShmArena", "ShmArena", "ShmArena"]  # tcp, auto, shm, unset (auto)
    assert run(transport_modes, world_size) == [want] * world_size


def test_transport_mode_parsing(monkeypatch):
    for value, mode in [("", "auto"), ("TCP", "tcp"), (" shm ", "shm"), ("auto", "auto")]:
        monkeypatch.setenv("PYC10D_TRANSPORT", value)
        assert transport_mode() == mode
    monkeypatch.delenv("PYC10D_TRANSPORT")
    assert transport_mode() == "auto"
    monkeypatch.setenv("PYC10D_TRANSPORT", "ib")
    with pytest.raises(ValueError, match="PYC10D_TRANSPORT"):
        transport_mode()
    monkeypatch.setenv("PYC10D_TRANSPORT", "shm")
    pg = ProcessGroup(HashStore(), 0, 1)  # one rank: nothing to share
    assert pg._arena is None
    pg.shutdown()


# -- issue order ---------------------------------------------------------------------------------
# Each ``_issue_*`` issues one collective number ``i`` on ``pg`` (without waiting) and returns its
# checks: (work, tensor, the value ``tensor`` must hold once ``work`` is done), or
# (work, None, None) for a collective with nothing to check.
def _issue_small_allreduce(pg, rank: int, world: int, i: int) -> list:
    t = torch.full((7,), float(rank + i))
    return [(pg.allreduce([t]), t, torch.full((7,), float(sum(range(world)) + world * i)))]


def _issue_slice_parallel_allreduce(pg, rank: int, world: int, i: int) -> list:
    """Slice-parallel, one round."""
    t = torch.arange(100_000, dtype=torch.float32) + rank + i
    want = torch.arange(100_000, dtype=torch.float32) * world + sum(range(world)) + world * i
    return [(pg.allreduce([t]), t, want)]


def _issue_broadcast(pg, rank: int, world: int, i: int) -> list:
    root = i % world
    t = torch.full((1000,), float(rank * 100 + i))
    return [(pg.broadcast([t], root=root), t, torch.full((1000,), float(root * 100 + i)))]


def _issue_allgather(pg, rank: int, world: int, i: int) -> list:
    outs = [torch.empty(513, dtype=torch.int64) for _ in range(world)]
    work = pg.allgather([outs], [torch.full((513,), rank * 10 + i, dtype=torch.int64)])
    return [
        (work, outs[r], torch.full((513,), r * 10 + i, dtype=torch.int64)) for r in range(world)
    ]


def _issue_barrier(pg, rank: int, world: int, i: int) -> list:
    return [(pg.barrier(), None, None)]


def _issue_two_round_allreduce(pg, rank: int, world: int, i: int) -> list:
    """Two rounds of the default slot."""
    t = torch.full((MiB + 3,), float(i + rank))
    want = torch.full((MiB + 3,), float(i + world - 1))
    return [(pg.allreduce([t], op=ReduceOp.MAX), t, want)]


def _issue_uneven_reduce_scatter(pg, rank: int, world: int, i: int) -> list:
    """Uneven blocks: over TCP, between arena collectives."""
    out = torch.empty(rank + 1)
    ins = [torch.full((r + 1,), float(rank + i)) for r in range(world)]
    want = torch.full((rank + 1,), float(sum(range(world)) + world * i))
    return [(pg.reduce_scatter([out], [ins]), out, want)]


def _issue_reduce_scatter_coalesced(pg, rank: int, world: int, i: int) -> list:
    """Two sub-operations through the arena, one seq."""
    outs = [torch.empty(3), torch.empty(70_000)]
    ins = [torch.arange(3 * world) + rank + i, torch.ones(70_000 * world) * (rank + i)]
    ins = [t.float() for t in ins]
    work = pg.reduce_scatter_tensor_coalesced(outs, ins)
    total = sum(range(world)) + world * i
    want = (torch.arange(3) + 3 * rank) * world + total
    return [(work, outs[0], want.float()), (work, outs[1], torch.full((70_000,), float(total)))]


def _issue_allgather_coalesced(pg, rank: int, world: int, i: int) -> list:
    outs = [torch.empty(world * 4), torch.empty(world * 2, dtype=torch.int32)]
    ins = [torch.full((4,), float(rank + i)), torch.full((2,), rank - i, dtype=torch.int32)]
    work = pg.allgather_into_tensor_coalesced(outs, ins)
    want0 = torch.tensor([float(r + i) for r in range(world)]).repeat_interleave(4)
    want1 = torch.tensor([r - i for r in range(world)], dtype=torch.int32)
    return [(work, outs[0], want0), (work, outs[1], want1.repeat_interleave(2))]


def _issue_alltoall_base(pg, rank: int, world: int, i: int) -> list:
    out = torch.empty(world * 5)
    t = torch.arange(world * 5, dtype=torch.float32) + 100 * rank + i
    want = torch.cat(
        [torch.arange(5, dtype=torch.float32) + 5 * rank + 100 * r + i for r in range(world)]
    )
    return [(pg.alltoall_base(out, t, [], []), out, want)]


# collective ``i`` is of kind ``i % 10``; kind 7 is an alltoall_base
_ISSUERS = {
    0: _issue_small_allreduce,
    1: _issue_slice_parallel_allreduce,
    2: _issue_broadcast,
    3: _issue_allgather,
    4: _issue_barrier,
    5: _issue_two_round_allreduce,
    6: _issue_uneven_reduce_scatter,
    7: _issue_alltoall_base,
    8: _issue_reduce_scatter_coalesced,
    9: _issue_allgather_coalesced,
}


def async_mix(ctx, threads: int) -> int:
    """Many collectives issued back to back on a group with several worker threads, then waited
    (in reverse): each arena collective must see its own peers' data."""
    pg, rank, world = make_pg(ctx, threads=threads), ctx.rank, ctx.world_size
    assert pg._arena is not None
    checks = []
    for i in range(60):
        checks.extend(_ISSUERS[i % 10](pg, rank, world, i))
    for work, tensor, want in reversed(checks):
        work.wait()
        if tensor is not None:
            same(tensor, want, "async collective")
    pg.shutdown()
    return len(checks)


@world_sizes(2, 3)
@pytest.mark.parametrize("threads", [2, 4])
def test_async_collectives_keep_issue_order(world_size, threads):
    results = run(async_mix, world_size, threads)
    assert len(set(results)) == 1


# -- a group spanning hosts ------------------------------------------------------------------------
def mixed_hosts(ctx) -> list:
    """Ranks 0 and 1 share a (pretend) host, the last rank is on another: no arena; messages go
    through shared-memory rings between 0 and 1 and over TCP to the other host."""
    os.environ["PYC10D_HOST_ID"] = "host-a" if ctx.rank < 2 else "host-b"
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    assert pg._arena is None
    shm_peers = list(pg._transport.shm_peers)
    for numel in (5, 300_000):  # direct and ring allreduce
        t = torch.arange(numel, dtype=torch.float64) + rank
        pg.allreduce([t]).wait()
        expected = torch.arange(numel, dtype=torch.float64) * size + sum(range(size))
        assert torch.equal(t, expected), numel
    t = torch.full((1000,), float(rank))
    pg.broadcast([t], _root(size - 1)).wait()
    assert torch.equal(t, torch.full((1000,), float(size - 1)))
    outs = [torch.zeros(7) for _ in range(size)]
    pg.allgather([outs], [torch.full((7,), float(rank))]).wait()
    assert [o.unique().tolist() for o in outs] == [[float(r)] for r in range(size)]
    src, dst = torch.arange(size * 3, dtype=torch.float32) + 100 * rank, torch.empty(size * 3)
    pg.alltoall_base(dst, src, [], []).wait()
    expected = torch.cat([torch.arange(3) + 3 * rank + 100 * r for r in range(size)])
    assert torch.equal(dst, expected.float())
    pg.shutdown()
    return shm_peers


def _root(root: int):
    opts = o.BroadcastOptions()
    opts.rootRank = root
    return opts


def test_group_spanning_hosts_mixes_shared_memory_and_tcp():
    assert run(mixed_hosts, 3) == [[1], [0], []]
