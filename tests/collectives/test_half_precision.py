"""Half-precision reductions round once: float16 and bfloat16 sums are accumulated in float32.

torch's seed ``test_allreduce_basics`` (test_c10d_gloo.py) allreduces 200 random float16 values
per rank and compares with the allgathered inputs summed by ``torch.sum``, which accumulates in
float32 and rounds once. Summing in float16 rank by rank rounds after every step instead, which
from three ranks on is off by whole units in the last place. Here every reduction path (allreduce
direct / ring over TCP, the shared-memory arena's whole-chunk and slice-parallel rounds, reduce,
reduce_scatter) must give exactly the float32 sum rounded once, under both transports.

Rank data of the "exact" cases are integers whose float32 sums are exact in any order, so the
ring's chunk-rotated order cannot change the bits; the seed case is checked against the rank-order
float32 sum, as the direct and arena paths accumulate in rank order.
"""

from __future__ import annotations

import pytest
import torch

from pyc10d.collectives import allreduce as allreduce_algos
from pyc10d.collectives import exchange
from pyc10d.collectives.context import OpContext
from pyc10d.core.reduce_op import ReduceOp
from pyc10d.process_group.options import ReduceOptions
from pyc10d.testing import spawn, world_sizes

from tests.collectives.test_algorithms_on_fake_transport import run_ranks
from tests.helpers.pg import make_pg, opts_of, value_of

TIMEOUT = 120
HALVES = (torch.float16, torch.bfloat16)
# elements: the seed's size (direct path / one arena round), over 64 KiB (TCP ring, arena
# slice-parallel), and over one 4 MiB arena slot of float16 (several rounds)
SIZES = (200, 70_001, 2_100_003)


def rounded_once(parts: list[torch.Tensor]) -> torch.Tensor:
    """``parts`` summed in rank order in float32, then rounded once to their dtype."""
    acc = parts[0].to(torch.float32)
    for part in parts[1:]:
        acc += part.to(torch.float32)
    return acc.to(parts[0].dtype)


def exact_input(rank: int, size: int, n: int, dtype: torch.dtype, case: int) -> torch.Tensor:
    """Integers that ``dtype`` mostly has to round, whose sums float32 holds exactly."""
    bound = 65504 // size if dtype == torch.float16 else 2**20
    gen = torch.Generator().manual_seed(1000 * case + rank)
    return torch.randint(-bound, bound + 1, (n,), generator=gen).to(dtype)


def assert_bits(actual: torch.Tensor, expected: torch.Tensor, what: object) -> None:
    """Bit-identical, naming the first elements that differ."""
    assert actual.dtype == expected.dtype, what
    differ = (actual.view(-1) != expected.view(-1)).nonzero().view(-1)
    assert differ.numel() == 0, f"{what}: {differ.numel()} differ, first at {differ[:5].tolist()}"


def seed_case(pg, rank: int, size: int) -> None:
    """The seed's fp16 SUM check, made exact: the allreduce equals the float32 sum rounded once."""
    torch.manual_seed(rank)
    tensor = ((torch.rand(200, 1, dtype=torch.float32) * 2 - 1) * 65504 / size).to(torch.float16)
    gathered = value_of(pg.allgather([[torch.zeros_like(tensor) for _ in range(size)]], [tensor]))
    result = value_of(pg.allreduce([tensor]))[0]
    assert_bits(result, rounded_once(gathered), "seed")
    torch.testing.assert_close(result, torch.stack(gathered).sum(dim=0), rtol=1e-2, atol=1e-3)


def exact_cases(pg, rank: int, size: int) -> None:
    """allreduce, reduce and reduce_scatter of every half dtype and size, bit for bit."""
    case = 0
    for dtype in HALVES:
        for n in SIZES:
            case += 1
            inputs = [exact_input(r, size, n, dtype, case) for r in range(size)]
            expected = rounded_once(inputs)
            tensor = inputs[rank].clone()
            pg.allreduce([tensor]).wait()
            assert_bits(tensor, expected, ("allreduce", dtype, n))
            root = case % size
            tensor = inputs[rank].clone()
            pg.reduce([tensor], opts_of(ReduceOptions, rootRank=root)).wait()
            assert_bits(tensor, expected if rank == root else inputs[rank], ("reduce", dtype, n))
            blocks = [t.tensor_split(size) for t in inputs]
            out = torch.empty_like(blocks[0][rank])
            pg.reduce_scatter([out], [list(blocks[rank])]).wait()
            assert_bits(out, rounded_once([b[rank] for b in blocks]), ("reduce_scatter", n))


def product_case(pg, rank: int, size: int) -> None:
    """PRODUCT accumulates in float32 too: 1.013671875 cubed rounds otherwise in float16."""
    factor = 1.013671875
    tensor = torch.full((5,), factor, dtype=torch.float16)
    pg.allreduce([tensor], ReduceOp.PRODUCT).wait()
    expected = torch.full((5,), factor**size, dtype=torch.float64).to(torch.float16)
    assert_bits(tensor, expected, "product")


def half_precision(ctx) -> bool:
    pg, rank, size = make_pg(ctx, timeout=60.0), ctx.rank, ctx.world_size
    seed_case(pg, rank, size)
    exact_cases(pg, rank, size)
    product_case(pg, rank, size)
    pg.shutdown()
    return True


@pytest.mark.both_transports
@world_sizes(2, 3)
def test_half_precision_sums_round_once(world_size):
    assert spawn(half_precision, world_size, timeout=TIMEOUT) == [True] * world_size


# -- the message-passing algorithms in one process (fake transport), up to torch's 4 ranks ----
@pytest.mark.parametrize("dtype", HALVES, ids=str)
@pytest.mark.parametrize("numel", [13, 70_001], ids=["direct", "ring"])
@pytest.mark.parametrize("size", [3, 4])
def test_fake_transport_allreduce_rounds_once(size: int, numel: int, dtype: torch.dtype) -> None:
    inputs = [exact_input(rank, size, numel, dtype, 7) for rank in range(size)]

    def body(ctx: OpContext) -> torch.Tensor:
        flat = inputs[ctx.rank].clone()
        allreduce_algos.allreduce(ctx, flat, ReduceOp.SUM)
        return flat

    expected = rounded_once(inputs)
    for rank, result in enumerate(run_ranks(size, body).values()):
        assert_bits(result, expected, rank)


@pytest.mark.parametrize("op", [ReduceOp.SUM, ReduceOp.PRODUCT], ids=str)
def test_fake_transport_reduce_scatter_of_2d_blocks_rounds_once(op: object) -> None:
    # float16 step by step: 2048 + 1 rounds back to 2048 (twice), 1.013671875 cubed rounds down
    size, shape = 3, (4, 5)
    values = [2048.0, 1.0, 1.0] if op == ReduceOp.SUM else [1.013671875] * 3
    sends = [
        [torch.full(shape, values[rank], dtype=torch.float16) for _ in range(size)]
        for rank in range(size)
    ]

    def body(ctx: OpContext) -> torch.Tensor:
        out = torch.empty(shape, dtype=torch.float16)
        exchange.reduce_scatter(ctx, sends[ctx.rank], out, op)
        return out

    wide = torch.tensor(values, dtype=torch.float64)
    value = wide.sum() if op == ReduceOp.SUM else wide.prod()
    expected = torch.full(shape, float(value), dtype=torch.float64).to(torch.float16)
    for rank, result in enumerate(run_ranks(size, body).values()):
        assert_bits(result, expected, rank)
