"""Reduction operations: ``ReduceOp`` and its ``RedOpType`` members, as in ``torch.distributed``.

As in torch, ``ReduceOp.SUM`` is a ``RedOpType`` enum member that passes ``isinstance(op,
ReduceOp)``; ``ReduceOp(ReduceOp.SUM)`` builds an op object holding ``.op`` (and ``.factor`` for
``PREMUL_SUM``). Objects compare equal to their member and to other objects with the same member,
hash like it, pickle, and copy. Torch's own ``torch.distributed.ReduceOp`` values are accepted
wherever an op is, through :func:`reduce_op_of` and :func:`to_reduce_op`.
"""

from __future__ import annotations

import enum
from typing import Any

import torch

__all__ = [
    "BITWISE_OPS",
    "NOT_FOR_COMPLEX",
    "RedOpType",
    "ReduceOp",
    "ReduceOpLike",
    "make_premul_sum",
    "reduce_op_of",
    "supports_complex",
    "to_reduce_op",
]


class RedOpType(enum.IntEnum):
    """The kinds of reduction, numbered like torch's ``ReduceOp.RedOpType`` (``UNUSED`` is 9)."""

    SUM = 0
    AVG = 1
    PRODUCT = 2
    MIN = 3
    MAX = 4
    BAND = 5
    BOR = 6
    BXOR = 7
    PREMUL_SUM = 8
    UNUSED = 9

    def __str__(self) -> str:
        """``RedOpType.SUM``, as torch prints its members."""
        return f"RedOpType.{self.name}"

    def __format__(self, spec: str) -> str:
        """Formats like ``str(op)`` (``IntEnum`` would format the number)."""
        return format(str(self), spec)

    def __eq__(self, other: object) -> bool:
        """Equal to the same member or its number; never to an op object (torch 2.13's
        ``RedOpType.__eq__``: ``ReduceOp.SUM == ReduceOp(ReduceOp.SUM)`` is False, while the
        op object's own ``__eq__`` says True)."""
        if type.__instancecheck__(ReduceOp, other):
            return False
        return int.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        """The negation of :meth:`__eq__` (``NotImplemented`` passed through)."""
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = int.__hash__  # ``hash(ReduceOp.SUM) == 0``, as in torch

    def __call__(self, factor: float | torch.Tensor) -> ReduceOp:
        """``ReduceOp.PREMUL_SUM(factor)``: a ``PREMUL_SUM`` op object, as torch's members make.

        Other members raise torch's RuntimeError.
        """
        if self is not RedOpType.PREMUL_SUM:
            raise RuntimeError(f"Only PREMUL_SUM supports calling with a factor, got {self}")
        return make_premul_sum(factor)


BITWISE_OPS = frozenset({RedOpType.BAND, RedOpType.BOR, RedOpType.BXOR})
"""Reductions defined only on bool and integer tensors."""

NOT_FOR_COMPLEX = BITWISE_OPS | {RedOpType.PRODUCT, RedOpType.MIN, RedOpType.MAX}
"""Reductions torch refuses on complex tensors (no order, no complex bitwise, no product)."""


class _ReduceOpMeta(type):
    """Makes ``isinstance(ReduceOp.SUM, ReduceOp)`` true, as torch's ``_ReduceOpMeta`` does."""

    def __instancecheck__(cls, instance: Any) -> bool:
        if isinstance(instance, RedOpType):
            return True
        return super().__instancecheck__(instance)


class ReduceOp(metaclass=_ReduceOpMeta):
    """A reduction: ``ReduceOp.SUM`` (a member) or ``ReduceOp(member)`` (an object with ``.op``).

    Mirrors ``torch.distributed.ReduceOp``: ``ReduceOp(op)`` takes a member (ours or torch's), an
    op object is equal to its member, and only ``PREMUL_SUM`` ops carry a ``factor``.
    """

    RedOpType = RedOpType
    SUM = RedOpType.SUM
    AVG = RedOpType.AVG
    PRODUCT = RedOpType.PRODUCT
    MIN = RedOpType.MIN
    MAX = RedOpType.MAX
    BAND = RedOpType.BAND
    BOR = RedOpType.BOR
    BXOR = RedOpType.BXOR
    PREMUL_SUM = RedOpType.PREMUL_SUM
    UNUSED = RedOpType.UNUSED

    __slots__ = ("_factor", "op")

    def __init__(self, op: ReduceOpLike) -> None:
        source = to_reduce_op(op)
        self.op: RedOpType = source.op
        self._factor: float | torch.Tensor | None = source._factor

    @property
    def factor(self) -> float | torch.Tensor:
        """The ``PREMUL_SUM`` scale; RuntimeError for other ops, like torch."""
        if self.op != RedOpType.PREMUL_SUM or self._factor is None:
            raise RuntimeError("Only PREMUL_SUM supports accessing factor")
        return self._factor

    def __eq__(self, other: object) -> bool:
        """Equal when the members are (the factor is ignored, as in torch)."""
        try:
            return self.op == reduce_op_of(other)  # type: ignore[arg-type]
        except TypeError:
            return NotImplemented

    def __hash__(self) -> int:
        return hash(self.op)

    def __getstate__(self) -> tuple[RedOpType, float | torch.Tensor | None]:
        """``(op, factor)``, the state torch pickles."""
        return (self.op, self._factor)

    def __setstate__(self, state: tuple[RedOpType, float | torch.Tensor | None]) -> None:
        op, factor = state
        self.op = RedOpType(op)
        self._factor = factor

    def __repr__(self) -> str:
        if self.op == RedOpType.PREMUL_SUM and self._factor is not None:
            return f"ReduceOp(PREMUL_SUM, factor={self._factor!r})"
        return f"ReduceOp({self.op.name})"


ReduceOpLike = ReduceOp | RedOpType | Any
"""Anything :func:`reduce_op_of` accepts: ours or torch's member or op object."""


def make_premul_sum(factor: float | torch.Tensor) -> ReduceOp:
    """A ``PREMUL_SUM`` op scaling every input by ``factor`` (torch's ``_make_nccl_premul_sum``).

    ``factor`` is a real number or a one-element tensor (torch: RuntimeError otherwise).
    """
    if isinstance(factor, torch.Tensor):
        if factor.numel() != 1:
            raise RuntimeError(
                f"PREMUL_SUM factor tensor must have exactly one element, got {factor.numel()}"
            )
    elif isinstance(factor, (int, float)) and not isinstance(factor, bool):
        factor = float(factor)
    else:
        kind = type(factor).__name__
        raise TypeError(f"PREMUL_SUM factor must be a float or a one-element tensor, got {kind}")
    op = ReduceOp.__new__(ReduceOp)
    op.__setstate__((RedOpType.PREMUL_SUM, factor))
    return op


def _torch_reduce_op_types() -> tuple[type, type] | None:
    """Torch's ``(ReduceOp, ReduceOp.RedOpType)`` classes, or None without torch.distributed."""
    if not torch.distributed.is_available():
        return None
    torch_op = torch.distributed.ReduceOp
    return torch_op, torch_op.RedOpType


def _from_torch(op: Any) -> tuple[RedOpType, float | torch.Tensor | None] | None:
    """``(member, factor)`` for a torch ``ReduceOp`` member or object; None for anything else."""
    types = _torch_reduce_op_types()
    if types is None:
        return None
    torch_op, torch_type = types
    if type(op) is torch_type:
        return RedOpType[op.name], None
    if type(op) is torch_op or type.__instancecheck__(torch_op, op):
        member = RedOpType[op.op.name]
        return member, (op.factor if member == RedOpType.PREMUL_SUM else None)
    return None


def reduce_op_of(op: ReduceOpLike) -> RedOpType:
    """The :class:`RedOpType` member of ``op``: ours or torch's member or op object.

    TypeError for anything else (plain ints included, as torch's ``ReduceOp`` rejects them).
    """
    if isinstance(op, RedOpType):
        return op
    if type.__instancecheck__(ReduceOp, op):
        return op.op
    converted = _from_torch(op)
    if converted is None:
        raise TypeError(f"expected a ReduceOp, got {type(op).__name__}: {op!r}")
    return converted[0]


def to_reduce_op(op: ReduceOpLike) -> ReduceOp:
    """``op`` as one of our :class:`ReduceOp` objects, keeping a ``PREMUL_SUM`` factor.

    Returns ``op`` itself when it already is one; TypeError like :func:`reduce_op_of`.
    """
    if type.__instancecheck__(ReduceOp, op):
        return op
    if isinstance(op, RedOpType):
        state: tuple[RedOpType, float | torch.Tensor | None] = (op, None)
    else:
        converted = _from_torch(op)
        if converted is None:
            raise TypeError(f"expected a ReduceOp, got {type(op).__name__}: {op!r}")
        state = converted
    result = ReduceOp.__new__(ReduceOp)
    result.__setstate__(state)
    return result


def supports_complex(op: ReduceOpLike) -> bool:
    """Whether ``op`` (ours or torch's) is meaningful on complex tensors, as in torch: MAX, MIN,
    PRODUCT and the bitwise ops are not."""
    return reduce_op_of(op) not in NOT_FOR_COMPLEX
