"""The shared-memory arena (``pyc10d.transport.shm.arena``) and its collectives
(``pyc10d.collectives.shm``), directly and through ``ProcessGroup``.

Arena-level bodies build a ``ShmArena`` with a small ``slot_bytes`` so that collectives run in
many rounds, and check every rank's result against one computed locally from every rank's
(deterministic) input. Rank bodies are module-level functions: the ranks of ``spawn`` import this
module by name. No ``pyc10d`` entry may be left in ``/dev/shm`` after any run.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import time
from datetime import timedelta

import pytest
import torch

from pyc10d import ProcessGroup
from pyc10d.collectives import shm
from pyc10d.core.errors import DistBackendError
from pyc10d.core.reduce_op import ReduceOp
from pyc10d.core.timeouts import Deadline
from pyc10d.process_group import options as o
from pyc10d.store import HashStore, PrefixStore
from pyc10d.testing import RankFailedError, spawn, world_sizes
from pyc10d.transport.base import TransportTimeout
from pyc10d.transport.factory import ENV, transport_mode
from pyc10d.transport.shm.arena import ShmArena

from pg_helpers import make_pg

SPAWN_TIMEOUT = 40  # every body here takes a few seconds at most; a hang fails within this
OP_SECONDS = 20.0  # the deadline of each arena collective that is expected to complete
MiB = 1024 * 1024


# -- helpers ----------------------------------------------------------------------------------
def shm_entries() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if "pyc10d" in n}


def shm_leftovers(before: set[str]) -> list[str]:
    """``pyc10d`` entries in /dev/shm not in ``before`` that stay (brief setups excepted)."""
    new = shm_entries() - before
    if new:
        time.sleep(0.5)
        new &= shm_entries()
    return sorted(new)


def run(fn, world_size: int, *args) -> list:
    """Spawn ``fn`` (default transport selection: the arena) and check that no segment is left
    behind in /dev/shm, whatever happened in the ranks."""
    before = shm_entries()
    try:
        return spawn(fn, world_size, args=args, timeout=SPAWN_TIMEOUT, env={ENV: "auto"})
    finally:
        assert shm_leftovers(before) == []


def arena_of(ctx, slot_bytes: int, prefix: str = "t", timeout: float = 30) -> ShmArena:
    return ShmArena(
        PrefixStore(prefix, ctx.store), ctx.rank, ctx.world_size, timeout, slot_bytes=slot_bytes
    )


class Collectives:
    """Runs the algorithms of ``pyc10d.collectives.shm`` on an arena with seq 1, 2, 3..."""

    def __init__(self, arena: ShmArena) -> None:
        self.arena = arena
        self.seq = 0

    def __getattr__(self, name: str):
        algorithm = getattr(shm, name)

        def call(*args):
            self.seq += 1
            self.arena.begin(self.seq)
            algorithm(self.arena, *args, Deadline(OP_SECONDS))

        return call


def make_input(rank: int, n: int, dtype: torch.dtype, seed: int, small: bool = False):
    """Rank ``rank``'s input of case ``seed``: every rank can compute every rank's input."""
    g = torch.Generator().manual_seed(seed * 1009 + rank)
    if dtype == torch.bool:
        return torch.randint(0, 2, (n,), generator=g).bool()
    if dtype.is_complex:
        return torch.randn(n, dtype=dtype, generator=g)
    if dtype.is_floating_point:
        x = torch.randn(n, generator=g, dtype=torch.float64) * 100
        if small:  # products of a few of these stay exact and in range
            x = torch.randint(-3, 4, (n,), generator=g).double() / 2
        return x.to(dtype)
    if small:
        return torch.randint(-3, 4, (n,), generator=g).to(dtype)
    low, high = (0, 256) if dtype == torch.uint8 else (-(2**30), 2**30)
    return torch.randint(low, high, (n,), generator=g, dtype=torch.int64).to(dtype)


def combine(op, parts):
    """``parts[0] (op) parts[1] (op) ...`` in rank order, one rounding per step."""
    acc = parts[0].clone()
    for x in parts[1:]:
        if op in (ReduceOp.SUM, ReduceOp.AVG):
            acc = torch.logical_or(acc, x) if acc.dtype == torch.bool else acc + x
        elif op == ReduceOp.PRODUCT:
            acc = torch.logical_and(acc, x) if acc.dtype == torch.bool else acc * x
        elif op == ReduceOp.MIN:
            acc = torch.minimum(acc, x)
        elif op == ReduceOp.MAX:
            acc = torch.maximum(acc, x)
        elif op == ReduceOp.BAND:
            acc = torch.bitwise_and(acc, x)
        elif op == ReduceOp.BOR:
            acc = torch.bitwise_or(acc, x)
        elif op == ReduceOp.BXOR:
            acc = torch.bitwise_xor(acc, x)
        else:
            raise AssertionError(op)
    return acc


def same(actual: torch.Tensor, expected: torch.Tensor, what) -> None:
    """Bit-identical (dtype, shape and bytes), NaNs included."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    a = actual.contiguous().view(-1).view(torch.uint8)
    e = expected.contiguous().view(-1).view(torch.uint8)
    if not torch.equal(a, e):
        bad = (actual.reshape(-1) != expected.reshape(-1)).nonzero()[:5].view(-1).tolist()
        raise AssertionError(f"{what}: differs at {bad} (of {actual.numel()})")


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INTS = (torch.int64, torch.int32, torch.uint8)
ALL_DTYPES = (*FLOATS, *INTS, torch.bool, torch.complex64)
BIT_OPS = (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR)


def ops_for(dtype: torch.dtype) -> list:
    if dtype.is_complex:
        return [ReduceOp.SUM]
    if dtype == torch.bool:
        return [ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX, *BIT_OPS]
    ops = [ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX, ReduceOp.AVG]
    return ops + list(BIT_OPS) if dtype in INTS else ops


# -- every algorithm, many rounds, every dtype and op -----------------------------------------
def reductions(ctx, slot_bytes: int, sizes: list[int]) -> dict:
    """allreduce, reduce (every root) and reduce_scatter for every dtype and op."""
    rank, world = ctx.rank, ctx.world_size
    arena = arena_of(ctx, slot_bytes)
    run_ = Collectives(arena)
    digests = {}
    case = 0
    with torch.inference_mode():
        for dtype in ALL_DTYPES:
            for op in ops_for(dtype):
                small = op == ReduceOp.PRODUCT
                for n in sizes:
                    case += 1
                    inputs = [make_input(r, n, dtype, case, small) for r in range(world)]
                    expected = combine(op, inputs)
                    what = (dtype, op, n)

                    flat = inputs[rank].clone()
                    run_.allreduce(flat, op)
                    same(flat, expected, ("allreduce", *what))
                    if op == ReduceOp.SUM and (dtype.is_floating_point or dtype.is_complex):
                        digests[str(what)] = digest(flat)

                    root = case % world
                    flat = inputs[rank].clone()
                    run_.reduce(flat, op, root)
                    same(flat, expected if rank == root else inputs[rank], ("reduce", *what))

                    # reduce_scatter: block b of rank r is inputs of case (case, b)
                    blocks = [
                        [make_input(r, n, dtype, case * 7 + b, small) for b in range(world)]
                        for r in range(world)
                    ]
                    recv = torch.empty(n, dtype=dtype)
                    send = [b.clone() for b in blocks[rank]]
                    run_.reduce_scatter(send, recv, op)
                    want = combine(op, [blocks[r][rank] for r in range(world)])
                    same(recv, want, ("reduce_scatter", *what))
                    for b in range(world):  # the inputs are left alone
                        same(send[b], blocks[rank][b], ("reduce_scatter input", *what))
    ctx.store.barrier("reductions-done", world, 30)
    arena.close()
    return digests


@world_sizes(2, 3)
def test_reductions_in_many_small_rounds(world_size):
    # 256-byte slots: 1..64 elements per round; sizes below the world size, odd, not a
    # multiple of the world size, exactly one slot of float32, and many rounds
    sizes = [1, 2, 7, 64, 65, 129, 1000]
    results = run(reductions, world_size, 256, sizes)
    assert results[0] and all(r == results[0] for r in results)  # same bits everywhere


def movements(ctx, slot_bytes: int, sizes: list[int]) -> int:
    """broadcast (every root), allgather and alltoall for every dtype; returns checks done."""
    rank, world = ctx.rank, ctx.world_size
    arena = arena_of(ctx, slot_bytes)
    run_ = Collectives(arena)
    checks = 0
    case = 0
    with torch.inference_mode():
        for dtype in ALL_DTYPES:
            for n in sizes:
                case += 1
                inputs = [make_input(r, n, dtype, case) for r in range(world)]
                for root in range(world):
                    flat = inputs[rank].clone() if rank == root else torch.zeros(n, dtype=dtype)
                    run_.broadcast(flat, root)
                    same(flat, inputs[root], ("broadcast", dtype, n, root))
                    checks += 1

                # allgather into 1-D and into 2-D outputs (n = 3 * k only)
                recv = [torch.zeros(n, dtype=dtype) for _ in range(world)]
                send = inputs[rank].clone()
                run_.allgather(send, recv)
                for r in range(world):
                    same(recv[r], inputs[r], ("allgather", dtype, n, r))
                same(send, inputs[rank], ("allgather input", dtype, n))
                checks += 1
                if n % 3 == 0:
                    recv2 = [torch.zeros(3, n // 3, dtype=dtype) for _ in range(world)]
                    run_.allgather(inputs[rank].clone(), recv2)
                    for r in range(world):
                        same(recv2[r], inputs[r].view(3, -1), ("allgather 2-D", dtype, n, r))
                    checks += 1

                # alltoall: block j of rank i (bound for rank j) is input of case (case, i, j)
                blocks = [
                    [make_input(i, n, dtype, case * 11 + j) for j in range(world)]
                    for i in range(world)
                ]
                recv = [torch.zeros(n, dtype=dtype) for _ in range(world)]
                run_.alltoall([b.clone() for b in blocks[rank]], recv)
                for i in range(world):
                    same(recv[i], blocks[i][rank], ("alltoall", dtype, n, i))
                checks += 1
    # barrier: nobody leaves before everyone entered (each sets a key before entering)
    for i in range(5):
        if rank == i % world:
            time.sleep(0.05)
        ctx.store.set(f"entered/{i}/{rank}", "1")
        run_.barrier()
        assert all(ctx.store.check([f"entered/{i}/{r}"]) for r in range(world)), i
        checks += 1
    ctx.store.barrier("movements-done", world, 30)
    arena.close()
    return checks


@world_sizes(2, 3)
def test_data_movement_in_many_small_rounds(world_size):
    sizes = [1, 2, 3, 63, 64, 65, 300, 1001]
    results = run(movements, world_size, 256, sizes)
    assert len(set(results)) == 1 and results[0] > 0


def slice_parallel(ctx) -> dict:
    """Allreduces whose chunks reach ``SLICE_MIN_BYTES``: reduce-scatter + allgather rounds."""
    rank, world = ctx.rank, ctx.world_size
    slot = 1 * MiB
    assert shm.SLICE_MIN_BYTES <= 100_000 * 4 < slot
    arena = arena_of(ctx, slot)
    run_ = Collectives(arena)
    per_round = slot // 4
    cases = [
        (torch.float32, ReduceOp.SUM, 100_000),  # one round, slice-parallel
        (torch.float32, ReduceOp.SUM, 100_001),  # slices of unequal lengths
        (torch.float32, ReduceOp.SUM, per_round * 2 + 5),  # 3 rounds, the last one small
        (torch.float32, ReduceOp.MAX, per_round + shm.SLICE_MIN_BYTES // 4 + 1),
        (torch.float64, ReduceOp.SUM, 150_001),  # 2 rounds, both sliced
        (torch.float16, ReduceOp.SUM, 200_003),
        (torch.bfloat16, ReduceOp.SUM, 70_001),
        (torch.complex64, ReduceOp.SUM, 50_000),
        (torch.int64, ReduceOp.MIN, 140_000),
        (torch.int32, ReduceOp.BXOR, 300_007),
        (torch.int64, ReduceOp.PRODUCT, 70_000),
        (torch.uint8, ReduceOp.BOR, 2 * MiB + 17),
        (torch.bool, ReduceOp.SUM, 1 * MiB + 3),
        (torch.bool, ReduceOp.PRODUCT, 40_000),
    ]
    digests = {}
    with torch.inference_mode():
        for case, (dtype, op, n) in enumerate(cases):
            assert n * dtype.itemsize >= shm.SLICE_MIN_BYTES
            inputs = [
                make_input(r, n, dtype, 500 + case, op == ReduceOp.PRODUCT) for r in range(world)
            ]
            flat = inputs[rank].clone()
            run_.allreduce(flat, op)
            same(flat, combine(op, inputs), ("allreduce", dtype, op, n))
            digests[str((dtype, op, n))] = digest(flat)
            root = case % world
            flat = inputs[rank].clone()
            run_.reduce(flat, op, root)
            same(flat, combine(op, inputs) if rank == root else inputs[rank], ("reduce", n))
    ctx.store.barrier("slice-done", world, 30)
    arena.close()
    return digests


@world_sizes(2, 3)
def test_slice_parallel_allreduce(world_size):
    results = run(slice_parallel, world_size)
    assert all(r == results[0] for r in results)  # every rank ends with the same bits


def stress(ctx, slot_bytes: int, iterations: int) -> int:
    """Many collectives of mixed kinds and sizes back to back (rounds, slot and parity reuse)."""
    rank, world = ctx.rank, ctx.world_size
    arena = arena_of(ctx, slot_bytes)
    run_ = Collectives(arena)
    rng = random.Random(99)  # the same choices on every rank
    per_round = slot_bytes // 4
    with torch.inference_mode():
        for i in range(iterations):
            kind = i % 7
            n = rng.choice([1, 2, 3, per_round - 1, per_round, per_round + 1, 3 * per_round + 7])
            n = max(1, n)
            root = rng.randrange(world)
            base = torch.arange(n, dtype=torch.float32)
            mine = base + 1000 * rank + i
            what = (i, kind, n)
            if kind == 0:
                run_.allreduce(mine, ReduceOp.SUM)
                same(mine, base * world + sum(1000 * r + i for r in range(world)), what)
            elif kind == 1:
                run_.broadcast(mine, root)
                same(mine, base + 1000 * root + i, what)
            elif kind == 2:
                recv = [torch.empty(n) for _ in range(world)]
                run_.allgather(mine, recv)
                for r in range(world):
                    same(recv[r], base + 1000 * r + i, what)
            elif kind == 3:
                run_.barrier()
            elif kind == 4:
                send = [mine + 7 * b for b in range(world)]
                recv = torch.empty(n)
                run_.reduce_scatter(send, recv, ReduceOp.MAX)
                same(recv, base + 1000 * (world - 1) + i + 7 * rank, what)
            elif kind == 5:
                send = [mine + 7 * b for b in range(world)]
                recv = [torch.empty(n) for _ in range(world)]
                run_.alltoall(send, recv)
                for r in range(world):
                    same(recv[r], base + 1000 * r + i + 7 * rank, what)
            else:
                run_.reduce(mine, ReduceOp.MIN, root)
                same(mine, base + i if rank == root else base + 1000 * rank + i, what)
    ctx.store.barrier("stress-done", world, 30)
    arena.close()
    return run_.seq


@world_sizes(2, 3)
@pytest.mark.parametrize("slot_bytes", [256, 64 * 1024])
def test_mixed_collectives_back_to_back(world_size, slot_bytes):
    assert run(stress, world_size, slot_bytes, 210) == [210] * world_size


# -- in place -----------------------------------------------------------------------------------
def aliasing(ctx) -> str:
    rank, world = ctx.rank, ctx.world_size
    arena = arena_of(ctx, 256)
    run_ = Collectives(arena)
    with torch.inference_mode():
        for n in (1, 5, 100, 1001):
            # reduce_scatter into this rank's own send block, then into another rank's block
            for target in (rank, (rank + 1) % world):
                blocks = [
                    [make_input(r, n, torch.int64, 40 + b) for b in range(world)]
                    for r in range(world)
                ]
                send = [b.clone() for b in blocks[rank]]
                run_.reduce_scatter(send, send[target], ReduceOp.SUM)
                want = combine(ReduceOp.SUM, [blocks[r][rank] for r in range(world)])
                same(send[target], want, ("reduce_scatter aliased", n, target))
                # the same within one buffer: send blocks are views of a tensor, recv one of them
                whole = torch.cat(blocks[rank])
                views = list(whole.split(n))
                run_.reduce_scatter(views, views[target], ReduceOp.SUM)
                same(views[target], want, ("reduce_scatter views", n, target))
            # allgather whose send is its own slot of the output
            recv = [torch.full((n,), -1.0) for _ in range(world)]
            recv[rank] = make_input(rank, n, torch.float32, 60)
            run_.allgather(recv[rank], recv)
            for r in range(world):
                same(recv[r], make_input(r, n, torch.float32, 60), ("allgather aliased", n))
            # ...and of one flat output buffer
            out = torch.zeros(world * n)
            parts = list(out.split(n))
            parts[rank].copy_(make_input(rank, n, torch.float32, 61))
            run_.allgather(parts[rank], parts)
            want = torch.cat([make_input(r, n, torch.float32, 61) for r in range(world)])
            same(out, want, ("allgather flat", n))
    ctx.store.barrier("alias-done", world, 30)
    arena.close()
    return "ok"


@world_sizes(2, 3)
def test_outputs_aliasing_inputs(world_size):
    assert run(aliasing, world_size) == ["ok"] * world_size


# -- timeouts -----------------------------------------------------------------------------------
def late_joiner(ctx, kind: str, n: int, slot_bytes: int, later_seconds: float) -> str:
    """After a first collective that every rank runs, rank 1 is late for collective #2: the
    others time out naming it and abandon it; rank 1 then joins #2 with a short deadline (it
    may fail; if it returns, its result must be right), and #3..#5, issued by every rank (the
    same operation and size as #2), work everywhere."""
    rank, world = ctx.rank, ctx.world_size
    arena = arena_of(ctx, slot_bytes)
    base = torch.arange(n, dtype=torch.float32)
    total = base * world + 1000 * sum(range(world))
    outcome = "ok"

    def collective(seq: int, seconds: float):
        arena.begin(seq)
        deadline = Deadline(seconds)
        with torch.inference_mode():
            if kind == "allreduce":
                out = base + 1000 * rank + seq
                shm.allreduce(arena, out, ReduceOp.SUM, deadline)
                same(out, total + world * seq, ("allreduce", seq))
            else:
                recv = [torch.zeros(n) for _ in range(world)]
                shm.allgather(arena, base + 1000 * rank + seq, recv, deadline)
                for r in range(world):
                    same(recv[r], base + 1000 * r + seq, ("allgather", seq, r))

    collective(1, OP_SECONDS)
    if rank != 1:
        start = time.monotonic()
        with pytest.raises(TransportTimeout) as info:
            collective(2, 0.3)
        message = str(info.value)
        assert message.startswith("Timed out waiting 300ms for rank(s) 1 in shared-mem"), message
        assert time.monotonic() - start < 5
        arena.abandon()
        ctx.store.set(f"timed-out/{rank}", "1")
    else:
        others = [f"timed-out/{r}" for r in range(world) if r != 1]
        ctx.store.wait(others, timedelta(seconds=30))
        try:
            collective(2, 0.5)
        except DistBackendError as exc:  # a timeout, or the others' abandoning it noticed
            outcome = f"late one failed: {type(exc).__name__}"
            arena.abandon()
    for seq in (3, 4, 5):
        collective(seq, later_seconds)
    ctx.store.barrier("late-done", world, 30)
    arena.close()
    return outcome


@world_sizes(2, 3)
@pytest.mark.parametrize(
    "kind, n, slot_bytes",
    [
        ("allreduce", 10, 4096),  # one round
        ("allgather", 10, 4096),
        ("allreduce", 3 * MiB, 4 * MiB),  # three slice-parallel rounds of the default slot
    ],
)
def test_timeout_names_the_late_rank_and_arena_stays_usable(world_size, kind, n, slot_bytes):
    outcomes = run(late_joiner, world_size, kind, n, slot_bytes, OP_SECONDS)
    assert outcomes[0] == "ok" and outcomes[2:] == ["ok"] * (world_size - 2)


@world_sizes(2, 3)
@pytest.mark.parametrize("kind", ["allreduce", "allgather"])
def test_late_rank_in_multi_round_collective_does_not_block_the_next(world_size, kind):
    # 1000 float32 in 256-byte slots: 16 rounds, no slice-parallel phase
    run(late_joiner, world_size, kind, 1000, 256, 1.5)


@world_sizes(2, 3)
def test_late_rank_gets_an_error_or_the_right_allgather(world_size):
    # 3 rounds of the default 4 MiB slot
    run(late_joiner, world_size, "allgather", 3 * MiB, 4 * MiB, 1.5)


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
        except RuntimeError as exc:  # rank 1 may already be in #3: it left #2 without posting
            message = str(exc)
            assert (
                "Timed out waiting 300ms for rank(s) 1" in message
                or "rank 1 left collective #2 without its part" in message
            ), exc
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


def shutdown_while_waiting(ctx) -> float:
    """Rank 0 shuts its group down while its large allreduce waits for the others in the arena."""
    pg, rank = make_pg(ctx, timeout=60), ctx.rank
    assert pg._arena is not None
    pg.barrier().wait()
    if rank != 0:
        ctx.store.wait(["shut"], timedelta(seconds=30))
        pg.shutdown()
        return 0.0
    work = pg.allreduce([torch.ones(2 * MiB)])
    time.sleep(0.3)
    start = time.monotonic()
    pg.shutdown()
    with pytest.raises(RuntimeError):
        work.wait()
    elapsed = time.monotonic() - start
    ctx.store.set("shut", "1")
    return elapsed


@world_sizes(2, 3)
def test_shutdown_ends_a_collective_waiting_in_the_arena(world_size):
    elapsed = run(shutdown_while_waiting, world_size)
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


def missing_peer(ctx) -> str:
    rank, world = ctx.rank, ctx.world_size
    if rank == world - 1:
        return "absent"  # never builds its arena
    start = time.monotonic()
    with pytest.raises(DistBackendError) as info:
        arena_of(ctx, 4096, timeout=1)
    message = str(info.value)
    assert f"setup on rank {rank} timed out after 1000ms" in message, message
    assert f"'seg/{world - 1}'" in message and "'seg/0'" not in message, message
    assert time.monotonic() - start < 5
    ctx.store.barrier("failed", world - 1, 30)  # the other ranks' setups have failed too
    assert shm_entries() == set()
    return "failed"


@world_sizes(2, 3)
def test_arena_setup_names_missing_peers_and_cleans_up(world_size):
    want = ["failed"] * (world_size - 1) + ["absent"]
    assert run(missing_peer, world_size) == want


def slot_mismatch(ctx) -> str:
    rank = ctx.rank
    if rank == 1:  # rank 0's segment is too small for it
        with pytest.raises(DistBackendError) as info:
            arena_of(ctx, 4096, timeout=2)
        message = str(info.value)
        assert "rank 0's shared-memory segment is 4608 bytes, expected 12288" in message, message
        assert "slot size" in message, message
    else:  # both ranks compare the sizes they published before sharing any memory
        with pytest.raises(DistBackendError) as info:
            arena_of(ctx, 256, timeout=2)
        message = str(info.value)
        assert "rank 1's shared-memory segment is 12288 bytes, expected 4608" in message, message
    ctx.store.barrier("failed", 2, 30)
    assert shm_entries() == set()
    return "failed"


def test_arena_setup_rejects_different_slot_sizes():
    assert run(slot_mismatch, 2) == ["failed", "failed"]


def late_setup(ctx) -> str:
    """Rank 1's arena setup times out waiting for rank 0; rank 0 arrives after that."""
    if ctx.rank == 1:
        with pytest.raises(DistBackendError, match="'seg/0'"):
            arena_of(ctx, 4096, timeout=0.5)
        ctx.store.set("gave-up", "1")
        return "gave up"
    ctx.store.wait(["gave-up"], timedelta(seconds=30))
    with pytest.raises(DistBackendError, match="rank 1"):
        arena_of(ctx, 4096, timeout=1)
    assert shm_entries() == set()
    return "failed"


def test_late_rank_in_arena_setup_gets_a_dist_error():
    assert run(late_setup, 2) == ["failed", "gave up"]


def test_slot_bytes_must_be_a_positive_multiple_of_64():
    for bad in (0, -64, 100):
        with pytest.raises(ValueError, match="multiple of 64"):
            ShmArena(HashStore(), 0, 2, 1, slot_bytes=bad)


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
def async_mix(ctx, threads: int) -> int:
    """Many collectives issued back to back on a group with several worker threads, then waited
    (in reverse): each arena collective must see its own peers' data."""
    pg, rank, world = make_pg(ctx, threads=threads), ctx.rank, ctx.world_size
    assert pg._arena is not None
    checks = []
    for i in range(60):
        kind = i % 10
        if kind == 0:
            t = torch.full((7,), float(rank + i))
            checks.append(
                (pg.allreduce([t]), t, torch.full((7,), float(sum(range(world)) + world * i)))
            )
        elif kind == 1:  # slice-parallel, one round
            t = torch.arange(100_000, dtype=torch.float32) + rank + i
            want = (
                torch.arange(100_000, dtype=torch.float32) * world + sum(range(world)) + world * i
            )
            checks.append((pg.allreduce([t]), t, want))
        elif kind == 2:
            root = i % world
            t = torch.full((1000,), float(rank * 100 + i))
            checks.append(
                (pg.broadcast([t], root=root), t, torch.full((1000,), float(root * 100 + i)))
            )
        elif kind == 3:
            outs = [torch.empty(513, dtype=torch.int64) for _ in range(world)]
            work = pg.allgather([outs], [torch.full((513,), rank * 10 + i, dtype=torch.int64)])
            for r in range(world):
                checks.append((work, outs[r], torch.full((513,), r * 10 + i, dtype=torch.int64)))
        elif kind == 4:
            checks.append((pg.barrier(), None, None))
        elif kind == 5:  # two rounds of the default slot
            t = torch.full((MiB + 3,), float(i + rank))
            checks.append(
                (
                    pg.allreduce([t], op=ReduceOp.MAX),
                    t,
                    torch.full((MiB + 3,), float(i + world - 1)),
                )
            )
        elif kind == 6:  # uneven blocks: over TCP, between arena collectives
            out = torch.empty(rank + 1)
            ins = [torch.full((r + 1,), float(rank + i)) for r in range(world)]
            want = torch.full((rank + 1,), float(sum(range(world)) + world * i))
            checks.append((pg.reduce_scatter([out], [ins]), out, want))
        elif kind == 8:  # two sub-operations through the arena, one seq
            outs = [torch.empty(3), torch.empty(70_000)]
            ins = [torch.arange(3 * world) + rank + i, torch.ones(70_000 * world) * (rank + i)]
            ins = [t.float() for t in ins]
            work = pg.reduce_scatter_tensor_coalesced(outs, ins)
            total = sum(range(world)) + world * i
            want = (torch.arange(3) + 3 * rank) * world + total
            checks.append((work, outs[0], want.float()))
            checks.append((work, outs[1], torch.full((70_000,), float(total))))
        elif kind == 9:
            outs = [torch.empty(world * 4), torch.empty(world * 2, dtype=torch.int32)]
            ins = [torch.full((4,), float(rank + i)), torch.full((2,), rank - i, dtype=torch.int32)]
            work = pg.allgather_into_tensor_coalesced(outs, ins)
            want = torch.tensor([float(r + i) for r in range(world)]).repeat_interleave(4)
            checks.append((work, outs[0], want))
            want = torch.tensor([r - i for r in range(world)], dtype=torch.int32)
            checks.append((work, outs[1], want.repeat_interleave(2)))
        else:
            out = torch.empty(world * 5)
            t = torch.arange(world * 5, dtype=torch.float32) + 100 * rank + i
            want = torch.cat(
                [
                    torch.arange(5, dtype=torch.float32) + 5 * rank + 100 * r + i
                    for r in range(world)
                ]
            )
            checks.append((pg.alltoall_base(out, t, [], []), out, want))
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
