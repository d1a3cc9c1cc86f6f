"""Element-wise reductions as in-place torch ops, for every ReduceOp and dtype torch allows."""

from __future__ import annotations

from collections.abc import Callable

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


def finish_average(tensor: torch.Tensor, count: int) -> None:
    """Divide a sum by ``count`` in place (AVG); integer tensors round toward zero."""
    if tensor.is_floating_point() or tensor.is_complex():
        tensor.div_(count)
    else:
        tensor.copy_(torch.div(tensor, count, rounding_mode="trunc"))
