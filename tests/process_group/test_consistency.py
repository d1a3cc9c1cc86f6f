"""Ranks never disagree about a collective's outcome (issue 15): every rank that takes part in a
collective either gets its result or raises, in that same collective, naming the rank at fault.

- a rank that joins a collective its peers already gave up on (timeout) raises, not a result;
- a gather/scatter whose list only one rank can see is wrong is refused on every rank;
- ranks running different collectives (op, reduce op, root, dtype) all raise, naming both sides,
  also when their arguments send their data different ways (the arena or the transport);
- all-to-all block sizes are checked on every rank before any data moves;
- a frozen rank is the one named by every other rank's timeout (TCP);
- a Work issued just before ``destroy_process_group`` completes; ``async_op`` must be a bool.

After each failure the group stays usable for the collectives every rank issues next.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import pytest
import torch

import pyc10d as dist
from pyc10d.core.errors import CollectiveAbandonedError, DistBackendError, TransportTimeout
from pyc10d.process_group import options as o
from pyc10d.process_group.validation import RankArgumentError
from pyc10d.testing import spawn, world_sizes
from pyc10d.transport.mailbox_transport import late_window

from tests.helpers.pg import make_pg

TIMEOUT = 90  # the most a test waits for its ranks
STORE_WAIT = timedelta(seconds=60)


def _opts(cls, **fields):
    opts = cls()
    for name, value in fields.items():
        setattr(opts, name, value)
    return opts


def _error(call) -> BaseException | None:
    """What ``call()`` raised (None if it returned)."""
    try:
        call()
    except Exception as exc:  # the test asserts on it
        return exc
    return None


def _sum_works(pg, rank: int, size: int) -> None:
    """Every rank's next allreduce works: the group is usable."""
    t = torch.full((5,), float(rank + 1))
    pg.allreduce([t]).wait()
    assert t.tolist() == [size * (size + 1) / 2] * 5, t


# -- item 1: a late rank gets an error, not a result ---------------------------------------------
def late_rank(ctx, numel: int) -> str:
    """Every rank but 1 times out on collective #1 (1 s); only then does rank 1 join it."""
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    opts = _opts(o.AllreduceOptions, timeout=timedelta(seconds=1))
    t = torch.full((numel,), float(rank + 1))
    if rank != 1:
        err = _error(lambda: pg.allreduce([t], opts).wait())
        assert isinstance(err, TransportTimeout), repr(err)
        assert "Timed out waiting 1000ms for rank" in str(err) and "#1" in str(err), err
        assert 1 in err.ranks, err
        ctx.store.set(f"timed-out/{rank}", "1")
    else:
        ctx.store.wait([f"timed-out/{r}" for r in range(size) if r != 1], STORE_WAIT)
        err = _error(lambda: pg.allreduce([t], opts).wait())
        assert isinstance(err, CollectiveAbandonedError), f"the late rank got {err!r}: {t}"
        assert err.peer != 1 and "gave up on collective #1" in str(err), err
        assert str(err).startswith("[rank 1] allreduce (#1) failed: "), err
    _sum_works(pg, rank, size)
    pg.shutdown()
    return "ok"


@pytest.mark.both_transports
@world_sizes(2, 3)
@pytest.mark.parametrize("numel", [4, 300_000], ids=["small", "large"])
def test_late_rank_raises_instead_of_completing(world_size, numel):
    assert spawn(late_rank, world_size, args=(numel,), timeout=TIMEOUT) == ["ok"] * world_size


RACE_TIMEOUT_S = 4.0  # collective #1's timeout in the deadline race: its late window is 1 s


def _hold_word_back(ctx, pg, deadline: float) -> None:
    """Make this rank, once it gives up on its next collective, tell its peers only when rank 1
    finished that collective (or a quarter of the late window after ``deadline``, wall clock,
    whichever comes first): the instant between a timeout and its control message, widened."""
    transport = pg._transport
    tell = transport.abandon

    def abandon(seq: int, payload: bytes) -> None:
        transport.abandon = tell  # once
        ctx.store.set(f"timed-out/{ctx.rank}", "1")
        hold = deadline + late_window(RACE_TIMEOUT_S) / 4 - time.time()
        try:
            ctx.store.wait(["finished"], timedelta(seconds=max(hold, 0.001)))
        except Exception:  # rank 1 is waiting for this word (the fix): give it
            pass
        tell(seq, payload)

    transport.abandon = abandon


def deadline_race(ctx) -> str:
    """Every rank but 1 times out on collective #1 (a small allreduce: rank 1 needs nothing more
    once its peers' data is here); rank 1 finishes it right after their deadline, before their
    "abandoned" messages arrive (held back until then). Rank 1 must raise too."""
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    opts = _opts(o.AllreduceOptions, timeout=timedelta(seconds=RACE_TIMEOUT_S))
    t = torch.full((4,), float(rank + 1))
    if rank != 1:
        _hold_word_back(ctx, pg, time.time() + RACE_TIMEOUT_S)
        err = _error(lambda: pg.allreduce([t], opts).wait())
        assert isinstance(err, TransportTimeout) and 1 in err.ranks, repr(err)
    else:
        ctx.store.wait([f"timed-out/{r}" for r in range(size) if r != 1], STORE_WAIT)
        err = _error(lambda: pg.allreduce([t], opts).wait())
        ctx.store.set("finished", "1")
        assert isinstance(err, CollectiveAbandonedError), f"rank 1 got {err!r}: {t}"
        assert err.peer != 1 and "gave up on collective #1" in str(err), err
    _sum_works(pg, rank, size)
    pg.shutdown()
    return "ok"


@world_sizes(2, 3)
def test_rank_finishing_at_its_peers_deadline_raises_over_tcp(world_size):
    """Issue 15 item 1, the race: over TCP a rank that completes a collective in the instant
    between its peer's timeout and the peer's "abandoned" message must not keep its result."""
    env = {"PYC10D_TRANSPORT": "tcp"}
    assert spawn(deadline_race, world_size, timeout=TIMEOUT, env=env) == ["ok"] * world_size


# -- item 2: a rooted collective one rank refuses fails on every rank ----------------------------
def refused_rooted(ctx) -> str:
    """gather with a wrong output list on the root, scatter with an input list on a non-root
    (the group API and the module API): the bad rank raises its own error, every other rank
    raises in that same collective quoting it, and the group stays usable."""
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    x = torch.full((3,), float(rank))
    gather_opts = _opts(o.GatherOptions, rootRank=0)
    outputs = [[torch.empty(3)]] if rank == 0 else []  # the root's list is one short
    err = _error(lambda: pg.gather(outputs, [x], gather_opts).wait())
    if rank == 0:
        assert isinstance(err, RankArgumentError), repr(err)
        assert "Incorrect output list size 1" in str(err), err
    else:
        assert isinstance(err, DistBackendError), repr(err)
        # from rank 0 itself, or from a peer that gave up on it first, quoting rank 0
        assert str(err).startswith(f"[rank {rank}] gather (#1) failed: rank "), err
        assert "rank 0 refused its part of gather" in str(err), err
        assert "Incorrect output list size 1" in str(err), err
    _sum_works(pg, rank, size)  # collective #2 everywhere

    bad = size - 1  # a non-root that passes an input list
    inputs = [[torch.ones(3) for _ in range(size)]] if rank in (0, bad) else []
    err = _error(lambda: pg.scatter([torch.empty(3)], inputs, _opts(o.ScatterOptions)).wait())
    if rank == bad:
        assert isinstance(err, RankArgumentError) and "requires empty input" in str(err), err
    else:
        assert isinstance(err, DistBackendError), repr(err)
        assert "scatter (#3) failed: rank " in str(err), err
        assert f"rank {bad} refused its part of scatter" in str(err), err
    _sum_works(pg, rank, size)  # #4
    assert pg._get_sequence_number_for_group() == 4
    pg.shutdown()
    return "ok"


@pytest.mark.both_transports
@world_sizes(2, 3)
def test_refused_gather_and_scatter_fail_every_rank(world_size):
    assert spawn(refused_rooted, world_size, timeout=TIMEOUT) == ["ok"] * world_size


def refused_by_module_api(ctx) -> str:
    """dist.scatter with ``scatter_list`` on a non-source rank and dist.gather without
    ``gather_list`` on the destination: torch's ValueError there, an error on every other rank
    in the same collective, then the group works."""
    dist.init_process_group(init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size)
    rank, size = ctx.rank, ctx.world_size
    bad = size - 1
    out = torch.zeros(2)
    scatter_list = [torch.ones(2) for _ in range(size)] if rank in (0, bad) else None
    err = _error(lambda: dist.scatter(out, scatter_list, src=0))
    if rank == bad:
        assert isinstance(err, ValueError), repr(err)
        assert "must NOT be specified on non-source ranks" in str(err), err
    else:
        assert isinstance(err, DistBackendError), repr(err)
        assert f"rank {bad} refused" in str(err) and "must NOT be specified" in str(err), err
    err = _error(lambda: dist.gather(torch.ones(2), None, dst=0))
    if rank == 0:
        assert isinstance(err, ValueError) and "must be specified on destination" in str(err)
    else:
        assert isinstance(err, DistBackendError) and "rank 0 refused" in str(err), repr(err)
    t = torch.ones(2)
    dist.all_reduce(t)
    assert t.tolist() == [float(size)] * 2
    dist.destroy_process_group()
    return "ok"


@pytest.mark.both_transports
@world_sizes(2, 3)
def test_module_api_list_errors_fail_every_rank(world_size):
    assert spawn(refused_by_module_api, world_size, timeout=TIMEOUT) == ["ok"] * world_size


# -- item 3: mismatched collectives raise on every rank, naming both sides ------------------------
def _mismatches(pg, rank: int) -> list:
    """(name, call) pairs where rank 0 runs one thing and the others another."""
    first = rank == 0
    sum_max = _opts(o.AllreduceOptions, reduceOp=dist.ReduceOp.SUM if first else dist.ReduceOp.MAX)
    return [
        ("reduce op", lambda: pg.allreduce([torch.ones(4)], sum_max)),
        ("root", lambda: pg.broadcast([torch.ones(4)], _opts(o.BroadcastOptions, rootRank=rank))),
        (
            "dtype",
            lambda: pg.allreduce([torch.ones(4, dtype=torch.float32 if first else torch.int32)]),
        ),
        (
            "operation",
            lambda: pg.allreduce([torch.ones(4)]) if first else pg.broadcast([torch.ones(4)]),
        ),
        (
            "reduce root",
            lambda: pg.reduce([torch.ones(4)], _opts(o.ReduceOptions, rootRank=0 if first else 1)),
        ),
        ("count", lambda: pg.allreduce([torch.ones(4 if first else 5)])),
    ]


def mismatched(ctx) -> list[str]:
    pg, rank, size = make_pg(ctx, timeout=30), ctx.rank, ctx.world_size
    seen = []
    for index, (name, call) in enumerate(_mismatches(pg, rank)):
        start = time.monotonic()
        err = _error(lambda call=call: call().wait())
        assert isinstance(err, DistBackendError), (name, err)
        message = str(err)
        assert f"(#{2 * index + 1}) failed: " in message, (name, message)
        assert " ran " in message and " but rank " in message, (name, message)  # both sides
        if "gave up on collective" not in message:  # not told by a peer: it saw them itself
            assert f"failed: rank {rank} ran " in message, (name, message)
        assert time.monotonic() - start < 15, (name, "not detected before the timeout")
        seen.append(name)
        _sum_works(pg, rank, size)
    pg.shutdown()
    return seen


@pytest.mark.both_transports
@world_sizes(2, 3)
def test_mismatched_collectives_fail_every_rank_naming_both_sides(world_size):
    names = ["reduce op", "root", "dtype", "operation", "reduce root", "count"]
    assert spawn(mismatched, world_size, timeout=TIMEOUT) == [names] * world_size


def _path_mismatches(pg, rank: int, size: int) -> list:
    """(name, call) pairs where rank 0's collective moves its data another way than its peers'
    (with an arena: over the transport while they use the arena, or the other way round)."""
    first = rank == 0
    gather = _opts(o.GatherOptions, rootRank=0)
    # rank 0's blocks all have its output's size (the arena's even case), its peers' do not
    blocks = [torch.ones(2) for _ in range(size)]
    if not first:
        blocks[0] = torch.ones(3)
    return [
        (
            "sparse vs dense",
            lambda: pg.allreduce([torch.ones(4).to_sparse() if first else torch.ones(4)]),
        ),
        (
            "gather vs allreduce",
            lambda: (
                pg.gather([[torch.empty(4) for _ in range(size)]], [torch.ones(4)], gather)
                if first
                else pg.allreduce([torch.ones(4)])
            ),
        ),
        ("even vs uneven reduce_scatter", lambda: pg.reduce_scatter([torch.empty(2)], [blocks])),
    ]


def path_mismatched(ctx) -> list[str]:
    pg, rank, size = make_pg(ctx, timeout=30), ctx.rank, ctx.world_size
    seen = []
    for index, (name, call) in enumerate(_path_mismatches(pg, rank, size)):
        start = time.monotonic()
        err = _error(lambda call=call: call().wait())
        assert isinstance(err, DistBackendError), (name, err)
        message = str(err)
        assert f"(#{2 * index + 1}) failed: " in message, (name, message)
        # both sides named; at world 3 a rank may first learn it from a peer that already
        # failed on the mismatch (the arena's abandonment does not carry the peer's reason yet)
        told = "gave up on collective" in message and "(it failed there)" in message
        assert (" ran " in message and " but rank " in message) or told, (name, message)
        assert time.monotonic() - start < 15, (name, "not detected before the timeout")
        seen.append(name)
        _sum_works(pg, rank, size)
    pg.shutdown()
    return seen


@pytest.mark.both_transports
@world_sizes(2, 3)
def test_ranks_taking_different_paths_get_the_mismatch_error(world_size):
    """Which way a collective's data goes (the arena or the transport) may depend on a rank's
    own arguments (a sparse tensor, uneven blocks): ranks that differ there must still meet and
    raise the mismatch, naming both sides, instead of each waiting for the other."""
    names = ["sparse vs dense", "gather vs allreduce", "even vs uneven reduce_scatter"]
    assert spawn(path_mismatched, world_size, timeout=TIMEOUT) == [names] * world_size


def detail_mismatch(ctx) -> str:
    """DETAIL mode compares the reduce op and the root too."""
    dist.init_process_group(init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size)
    dist.set_debug_level(dist.DebugLevel.DETAIL)
    rank = ctx.rank
    op = dist.ReduceOp.SUM if rank == 0 else dist.ReduceOp.MAX
    with pytest.raises(RuntimeError, match=r"Reduce op: (SUM vs MAX|MAX vs SUM)"):
        dist.all_reduce(torch.ones(2), op=op)
    with pytest.raises(RuntimeError, match=r"Root: \d vs \d"):
        dist.broadcast(torch.ones(2), src=rank)
    t = torch.ones(2)
    dist.all_reduce(t)
    assert t.tolist() == [float(ctx.world_size)] * 2
    dist.destroy_process_group()
    return "ok"


@world_sizes(2, 3)
def test_detail_mode_compares_reduce_op_and_root(world_size):
    assert spawn(detail_mismatch, world_size, timeout=TIMEOUT) == ["ok"] * world_size


# -- item 4: all-to-all sizes are checked before anything is sent ---------------------------------
def alltoall_sizes(ctx) -> str:
    """(a) rank 0's own output block is too small: Gloo's message there, the collective refused
    on the others; (b) rank 0 expects 3 elements from rank 1, which sends 4: every rank raises
    naming both. Both fast (the group's timeout is 60 s), then the group works."""
    dist.init_process_group(
        init_method=ctx.init_method,
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=timedelta(seconds=60),
    )
    rank, size = ctx.rank, ctx.world_size
    inputs = [torch.ones(4) for _ in range(size)]
    outputs = [torch.empty(3 if (rank, r) == (0, 0) else 4) for r in range(size)]
    start = time.monotonic()
    err = _error(lambda: dist.all_to_all(outputs, inputs))
    if rank == 0:
        assert isinstance(err, RuntimeError), repr(err)
        assert "invalid tensor size at index 0 (expected (4), got (3))" in str(err), err
    else:
        assert isinstance(err, DistBackendError) and "rank 0 refused" in str(err), repr(err)
        assert "invalid tensor size at index 0" in str(err), err
    outputs = [torch.empty(3 if (rank, r) == (0, 1) else 4) for r in range(size)]
    err = _error(lambda: dist.all_to_all(outputs, inputs))
    assert isinstance(err, DistBackendError), repr(err)
    assert "rank 1 sends 4 elements to rank 0, which expects 3" in str(err), err
    assert time.monotonic() - start < 20
    outputs = [torch.empty(4) for _ in range(size)]
    dist.all_to_all(outputs, [torch.full((4,), float(rank)) for _ in range(size)])
    assert [t[0].item() for t in outputs] == [float(r) for r in range(size)]
    dist.destroy_process_group()
    return "ok"


@pytest.mark.both_transports
@world_sizes(2, 3)
def test_alltoall_sizes_checked_on_every_rank_before_sending(world_size):
    assert spawn(alltoall_sizes, world_size, timeout=TIMEOUT) == ["ok"] * world_size


# -- item 6: a frozen rank is the one every other rank names --------------------------------------
ROUNDS = 5


def _loop_until_failure(pg, numel: int, freeze_after: int, victim: int | None) -> BaseException:
    """Allreduce (alternately small and large: direct and ring) until one fails; with a
    ``victim``, freeze it (SIGSTOP) after ``freeze_after`` of them."""
    for index in range(1_000_000):
        if index == freeze_after and victim is not None:
            os.kill(victim, signal.SIGSTOP)
        n = numel if index % 2 else 4
        err = _error(lambda n=n: pg.allreduce([torch.ones(n)]).wait())
        if err is not None:
            return err
    raise AssertionError("no collective failed")


def frozen_rank(ctx, numel: int) -> list[str]:
    """Each round: a fresh group (2 s timeout) loops over allreduces; rank 0 freezes rank 1
    (SIGSTOP) after a few of them, wherever rank 1 then is (between collectives, or in one:
    a ring step, waiting for a peer...); ranks 0 and 2 must time out naming rank 1 (and not
    each other, nor a message tag); rank 1 is resumed (SIGCONT) and must fail too."""
    rank = ctx.rank
    messages = []
    ctx.store.set(f"pid/{rank}", str(os.getpid()))
    victim = int(ctx.store.get("pid/1"))
    for round_ in range(ROUNDS):
        pg = make_pg(ctx, timeout=2.0)
        pg.barrier().wait()
        err = _loop_until_failure(pg, numel, 2 * round_ + 1, victim if rank == 0 else None)
        if rank != 1:
            try:
                assert isinstance(err, TransportTimeout), repr(err)
                assert err.ranks == (1,), err
                reason = str(err).split(" failed: ", 1)[1]
                assert "for rank 1 " in reason and "rank 2" not in reason, reason
                assert "rank 0" not in reason and "message " not in reason, reason
                messages.append(reason)
            finally:
                ctx.store.set(f"failed/{round_}/{rank}", "1")
        if rank == 0:
            ctx.store.wait([f"failed/{round_}/{r}" for r in (0, 2)], STORE_WAIT)
            os.kill(victim, signal.SIGCONT)
        if rank == 1:
            assert isinstance(err, DistBackendError), repr(err)
        pg.shutdown()
        ctx.store.barrier(f"round/{round_}", ctx.world_size, STORE_WAIT)
    return messages


@pytest.mark.parametrize("numel", [100_000])
def test_frozen_rank_is_named_by_every_timeout_over_tcp(numel):
    results = spawn(frozen_rank, 3, args=(numel,), timeout=180, env={"PYC10D_TRANSPORT": "tcp"})
    assert len(results[0]) == len(results[2]) == ROUNDS
    assert results[1] == []


# -- item 8: shutdown drains issued work; async_op must be a bool ---------------------------------
def destroy_right_after_issue(ctx) -> str:
    dist.init_process_group(init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size)
    t = torch.full((1000,), float(ctx.rank + 1))
    work = dist.all_reduce(t, async_op=True)
    dist.destroy_process_group()  # as Gloo does, the issued allreduce finishes first
    work.wait()
    assert t.tolist() == [ctx.world_size * (ctx.world_size + 1) / 2] * 1000
    return "ok"


@pytest.mark.both_transports
@world_sizes(2, 3)
def test_work_issued_before_destroy_completes(world_size):
    assert spawn(destroy_right_after_issue, world_size, timeout=TIMEOUT) == ["ok"] * world_size


def non_bool_async_op(ctx) -> str:
    dist.init_process_group(init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size)
    with pytest.raises(TypeError, match=r"(?s)incompatible function arguments.*arg0: bool"):
        dist.all_reduce(torch.ones(1), async_op="yes")  # torch's TypeError; nothing issued
    assert dist._get_default_group()._get_sequence_number_for_group() == 0
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == ctx.world_size
    dist.destroy_process_group()
    return "ok"


def test_module_api_refuses_a_non_bool_async_op():
    assert spawn(non_bool_async_op, 2, timeout=TIMEOUT) == ["ok"] * 2


def test_async_op_must_be_a_bool():
    """torch's bound option setters take a bool (or what pybind11 converts: None, numbers)."""
    opts = dist.AllreduceOptions()
    with pytest.raises(TypeError, match=r"(?s)incompatible function arguments.*arg0: bool"):
        opts.asyncOp = "yes"
    with pytest.raises(TypeError, match="incompatible function arguments"):
        opts.asyncOp = [1]
    for value, expected in ((None, False), (0, False), (2, True), (False, False)):
        opts.asyncOp = value
        assert opts.asyncOp is expected
