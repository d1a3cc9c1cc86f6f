"""The shared-memory arena's collectives (``pyc10d.collectives.shm``), run directly on a
``ShmArena`` (the arena itself: tests/transport/shm/test_arena.py; through ``ProcessGroup``:
tests/process_group/test_shm_arena.py).

The bodies build a ``ShmArena`` with a small ``slot_bytes`` so that collectives run in many
rounds, and check every rank's result against one computed locally from every rank's
(deterministic) input. Rank bodies are module-level functions: the ranks of ``spawn`` import this
module by name. No ``pyc10d`` entry may be left in ``/dev/shm`` after any run.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from datetime import timedelta

import pytest
import torch

from pyc10d.collectives import shm
from pyc10d.core.errors import DistBackendError, TransportTimeout
from pyc10d.core.reduce_op import ReduceOp
from pyc10d.core.timeouts import Deadline
from pyc10d.testing import world_sizes
from pyc10d.transport.shm.arena import ShmArena

from tests.helpers.shm import OP_SECONDS, MiB, arena_of, run, same


# -- helpers ----------------------------------------------------------------------------------
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


HALVES = (torch.float16, torch.bfloat16)


def combine(op, parts):
    """``parts[0] (op) parts[1] (op) ...`` in rank order, one rounding per step (half-precision
    sums and products of three or more: in float32, rounded once at the end)."""
    wide = parts[0].dtype in HALVES and len(parts) > 2 and op not in (ReduceOp.MIN, ReduceOp.MAX)
    if wide:
        return combine(op, [p.to(torch.float32) for p in parts]).to(parts[0].dtype)
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
    others time out naming it and abandon it; rank 1 then joins #2 with a short deadline and
    must fail too (the others gave up on it: no rank keeps a result of it), and #3..#5, issued
    by every rank (the same operation and size as #2), work everywhere."""
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
        # rank 1 is named; on a loaded machine another rank may also be 300 ms late
        named = re.match(r"Timed out waiting 300ms for rank\(s\) ([\d, ]+) in shared-mem", message)
        assert named and "1" in named.group(1).split(", "), message
        assert time.monotonic() - start < 5
        arena.abandon(2)
        ctx.store.set(f"timed-out/{rank}", "1")
    else:
        others = [f"timed-out/{r}" for r in range(world) if r != 1]
        ctx.store.wait(others, timedelta(seconds=30))
        try:
            collective(2, 0.5)
        except DistBackendError as exc:  # the others' abandoning it noticed
            outcome = f"late one failed: {type(exc).__name__}: {exc}"
            arena.abandon(2)
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
    check_late_one_failed(outcomes[1])


def check_late_one_failed(outcome: str) -> None:
    """Rank 1, late for collective #2, raised naming a rank that gave up on it (not a result)."""
    assert outcome.startswith("late one failed: CollectiveAbandonedError: rank "), outcome
    assert "gave up on collective #2" in outcome, outcome


@world_sizes(2, 3)
@pytest.mark.parametrize("kind", ["allreduce", "allgather"])
def test_late_rank_in_multi_round_collective_does_not_block_the_next(world_size, kind):
    # 1000 float32 in 256-byte slots: 16 rounds, no slice-parallel phase
    check_late_one_failed(run(late_joiner, world_size, kind, 1000, 256, 1.5)[1])


@world_sizes(2, 3)
def test_late_rank_gets_an_error_not_the_allgather(world_size):
    # 3 rounds of the default 4 MiB slot
    check_late_one_failed(run(late_joiner, world_size, "allgather", 3 * MiB, 4 * MiB, 1.5)[1])
