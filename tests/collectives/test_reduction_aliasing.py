"""``reduction.combine`` writing straight over one of its parts, and ``shm.capped`` (the torch
thread cap of large arena collectives): what the slice-parallel shared-memory collectives rely
on to reduce a rank's own part in place."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pyc10d.collectives import shm
from pyc10d.collectives.reduction import accumulates_wide, combine
from pyc10d.core.reduce_op import ReduceOp

DTYPES = (
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
)
OPS = (
    ReduceOp.SUM,
    ReduceOp.AVG,
    ReduceOp.PRODUCT,
    ReduceOp.MIN,
    ReduceOp.MAX,
    ReduceOp.BAND,
    ReduceOp.BOR,
    ReduceOp.BXOR,
)


def _parts(dtype: torch.dtype, count: int, n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(count * 100 + n)
    if dtype == torch.bool:
        return [torch.randint(0, 2, (n,), generator=generator).bool() for _ in range(count)]
    values = [torch.randint(-6, 7, (n,), generator=generator) for _ in range(count)]
    if dtype == torch.uint8:
        values = [v.abs() for v in values]
    if dtype.is_floating_point or dtype.is_complex:
        return [(v.to(torch.float64) / 4).to(dtype) for v in values]
    return [v.to(dtype) for v in values]


def _supported(op: object, dtype: torch.dtype) -> bool:
    bitwise = op in (ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR)
    if bitwise:
        return not (dtype.is_floating_point or dtype.is_complex)
    if dtype.is_complex:
        return op in (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.PRODUCT)
    return True


@pytest.mark.parametrize("count", [2, 3, 4])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_combine_over_its_own_part_matches_a_fresh_output(dtype, count):
    checked = 0
    for op in OPS:
        if not _supported(op, dtype):
            continue
        wide = accumulates_wide(op, dtype, count)
        for n in (1, 7, 70_001) if wide else (1, 7, 1000):  # 70_001: two wide blocks
            parts = _parts(dtype, count, n)
            expected = torch.empty_like(parts[0])
            combine(op, expected, parts)
            for index in range(count) if wide else range(2):
                aliased = [p.clone() for p in parts]
                combine(op, aliased[index], aliased)
                assert torch.equal(aliased[index], expected), (op, dtype, count, n, index)
                others = [p for k, p in enumerate(aliased) if k != index]
                originals = [p for k, p in enumerate(parts) if k != index]
                assert all(torch.equal(a, b) for a, b in zip(others, originals, strict=True))
                checked += 1
    assert checked > 0


def test_combine_of_one_part_into_itself_keeps_it():
    part = torch.arange(5.0)
    combine(ReduceOp.SUM, part, [part])
    assert torch.equal(part, torch.arange(5.0))
    out = torch.zeros(5)
    combine(ReduceOp.MAX, out, [part])
    assert torch.equal(out, part)


def test_combine_keeps_torchs_error_for_an_unsupported_op():
    parts = [torch.ones(3), torch.ones(3)]
    with pytest.raises(RuntimeError, match="bitwise_and"):
        combine(ReduceOp.BAND, parts[0], parts)


# -- the thread cap -----------------------------------------------------------------------------
@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _seen() -> tuple[list[int], object]:
    seen: list[int] = []
    return seen, lambda: seen.append(torch.get_num_threads())


def test_capped_runs_large_collectives_with_the_ranks_share_of_threads(two_threads):
    seen, body = _seen()
    shm.capped(SimpleNamespace(threads=1), shm.CAP_MIN_BYTES, body)
    assert seen == [1]
    assert torch.get_num_threads() == 2  # restored


def test_capped_leaves_small_collectives_and_enough_threads_alone(two_threads):
    seen, body = _seen()
    shm.capped(SimpleNamespace(threads=1), shm.CAP_MIN_BYTES - 1, body)
    shm.capped(SimpleNamespace(threads=2), 1 << 30, body)
    shm.capped(SimpleNamespace(threads=4), 1 << 30, body)
    assert seen == [2, 2, 2]


def test_capped_restores_the_threads_when_the_collective_raises(two_threads):
    def fail() -> None:
        raise TimeoutError("boom")

    with pytest.raises(TimeoutError, match="boom"):
        shm.capped(SimpleNamespace(threads=1), 1 << 30, fail)
    assert torch.get_num_threads() == 2
