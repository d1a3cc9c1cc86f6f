"""Element-wise reductions as in-place torch ops, for every ReduceOp and dtype torch allows.

Half-precision (float16, bfloat16) sums and products of more than two operands are accumulated in
float32 and rounded once at the end, as ``torch.sum`` does on CPU: rounding after every step
drifts by whole units in the last place from three ranks on. Two operands need no widening: their
float32 result, rounded to the half type, is already the correctly rounded one (float32 carries
more than twice the half types' precision), so world size 2 and every other dtype pay nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..core.reduce_op import ReduceOp

Reducer = Callable[[torch.Tensor, torch.Tensor], object]


def _sum(acc: torch.Tensor, x: torch.Tensor) -> object:
    return acc.logical_or_(x) if acc.dtype == torch.bool else acc.add_(x)


def _product(acc: torch.Tensor, x: torch.Tensor) -> object:
    return acc.logical_and_(x) if acc.dtype == torch.bool else acc.mul_(x)


def _min(acc: torch.Tensor, x: torch.Tensor) -> object:
    return torch.minimum(acc, x, out=acc)


def _max(acc: torch.Tensor, x: torch.Tensor) -> object:
    return torch.maximum(acc, x, out=acc)


def _band(acc: torch.Tensor, x: torch.Tensor) -> object:
    return acc.bitwise_and_(x)


def _bor(acc: torch.Tensor, x: torch.Tensor) -> object:
    return acc.bitwise_or_(x)


def _bxor(acc: torch.Tensor, x: torch.Tensor) -> object:
    return acc.bitwise_xor_(x)


_REDUCERS: dict[object, Reducer] = {
    ReduceOp.SUM: _sum,
    ReduceOp.AVG: _sum,
    ReduceOp.PREMUL_SUM: _sum,
    ReduceOp.PRODUCT: _product,
    ReduceOp.MIN: _min,
    ReduceOp.MAX: _max,
    ReduceOp.BAND: _band,
    ReduceOp.BOR: _bor,
    ReduceOp.BXOR: _bxor,
}


def reducer(op: object) -> Reducer:
    """The in-place ``acc = acc (op) x`` function for ``op``."""
    return _REDUCERS[op]


def reduce_into(op: object, acc: torch.Tensor, x: torch.Tensor) -> None:
    """``acc = acc (op) x``, in place."""
    _REDUCERS[op](acc, x)


HALF_DTYPES = frozenset({torch.float16, torch.bfloat16})
WIDE_DTYPE = torch.float32
WIDE_BLOCK = 64 * 1024  # elements of float32 accumulated at a time (256 KiB: stays in cache)
_ADDITIVE = (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.PREMUL_SUM)
_WIDENED_OPS = (*_ADDITIVE, ReduceOp.PRODUCT)


def accumulates_wide(op: object, dtype: torch.dtype, operands: int) -> bool:
    """True if combining ``operands`` values of ``dtype`` with ``op`` must accumulate in float32:
    half-precision sums and products of more than two operands."""
    return operands > 2 and dtype in HALF_DTYPES and op in _WIDENED_OPS


def _binary(op: object, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out = a (op) b`` with one torch op writing straight into ``out`` (which may be ``a`` or
    ``b`` itself: element-wise ops read each element before writing it)."""
    if out.dtype == torch.bool and op in _ADDITIVE:
        torch.logical_or(a, b, out=out)
    elif out.dtype == torch.bool and op == ReduceOp.PRODUCT:
        torch.logical_and(a, b, out=out)
    else:
        _BINARY[op](a, b, out=out)


_BINARY: dict[object, Callable[..., object]] = {
    ReduceOp.SUM: torch.add,
    ReduceOp.AVG: torch.add,
    ReduceOp.PREMUL_SUM: torch.add,
    ReduceOp.PRODUCT: torch.mul,
    ReduceOp.MIN: torch.minimum,
    ReduceOp.MAX: torch.maximum,
    ReduceOp.BAND: torch.bitwise_and,
    ReduceOp.BOR: torch.bitwise_or,
    ReduceOp.BXOR: torch.bitwise_xor,
}


def combine(op: object, out: torch.Tensor, parts: Sequence[torch.Tensor]) -> None:
    """``out = parts[0] (op) parts[1] (op) ...`` in the given (rank) order. ``out`` may be
    ``parts[0]`` or ``parts[1]`` itself (the very same elements), or any part when the
    combination accumulates wide; it overlaps no other part. Half-precision sums and products
    of three or more parts accumulate in float32, rounded once."""
    if accumulates_wide(op, out.dtype, len(parts)):
        _combine_wide(_REDUCERS[op], out, parts)
        return
    if len(parts) == 1:
        if out.data_ptr() != parts[0].data_ptr():
            out.copy_(parts[0])
        return
    _binary(op, out, parts[0], parts[1])
    for part in parts[2:]:
        _REDUCERS[op](out, part)


def _combine_wide(reduce: Reducer, out: torch.Tensor, parts: Sequence[torch.Tensor]) -> None:
    """:func:`combine` in float32, a cache-sized block at a time for 1-D tensors (widening each
    part into a scratch block first: cheaper than a mixed-dtype in-place op)."""
    if out.dim() != 1 or any(part.dim() != 1 for part in parts):
        acc = parts[0].to(WIDE_DTYPE)
        for part in parts[1:]:
            reduce(acc, part.to(WIDE_DTYPE))
        out.copy_(acc)
        return
    count = out.numel()
    acc_block = torch.empty(min(count, WIDE_BLOCK), dtype=WIDE_DTYPE)
    part_block = torch.empty_like(acc_block)
    for start in range(0, count, WIDE_BLOCK):
        stop = min(start + WIDE_BLOCK, count)
        acc, widened = acc_block[: stop - start], part_block[: stop - start]
        acc.copy_(parts[0][start:stop])
        for part in parts[1:]:
            widened.copy_(part[start:stop])
            reduce(acc, widened)
        out[start:stop].copy_(acc)


def finish_average(tensor: torch.Tensor, count: int) -> None:
    """Divide a sum by ``count`` in place (AVG); integer tensors round toward zero."""
    if tensor.is_floating_point() or tensor.is_complex():
        tensor.div_(count)
    else:
        tensor.copy_(torch.div(tensor, count, rounding_mode="trunc"))
