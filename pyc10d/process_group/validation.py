"""Argument checks of every collective, run before anything is sent (no communication).

Each ``check_*`` function mirrors the checks torch's ``ProcessGroupGloo`` makes when the method
is called, in the same order and with the same messages (``ProcessGroupGloo::<op>: ...``), so the
first error a bad call hits is the one torch reports. Checks torch only makes later, when the work
runs (unsupported dtypes, reductions a dtype cannot do, split sizes), are made here up front.
Errors are ``RuntimeError`` as in torch, ``TypeError`` for arguments that are not tensors.

A check that only this rank can make, because the ranks' arguments legitimately differ there
(a gather root's output list, a scatter root's input list, a list passed on a non-root), raises
:class:`RankArgumentError`: the process group then refuses the collective on every rank
instead of leaving the others in it (see ``ProcessGroup._refuse``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NoReturn

import torch

from ..core.dtypes import SUPPORTED_DTYPES
from ..core.reduce_op import (
    BITWISE_OPS,
    NOT_FOR_COMPLEX,
    RedOpType,
    ReduceOp,
    ReduceOpLike,
    reduce_op_of,
    to_reduce_op,
)
from ..core.tags import MAX_TAG
from .options import (
    AllreduceCoalescedOptions,
    AllreduceOptions,
    AllToAllOptions,
    BroadcastOptions,
    GatherOptions,
    ReduceOpOptions,
    ReduceOptions,
    ReduceScatterOptions,
    RootRankOptions,
    RootTensorOptions,
    ScatterOptions,
)

__all__ = [
    "BACKEND_NAME",
    "RankArgumentError",
    "check_allgather",
    "check_allgather_base",
    "check_allgather_coalesced",
    "check_allgather_into_tensor_coalesced",
    "check_allreduce",
    "check_allreduce_coalesced",
    "check_alltoall",
    "check_alltoall_base",
    "check_broadcast",
    "check_contiguous_input",
    "check_dense",
    "check_dtype_supported",
    "check_gather",
    "check_non_empty",
    "check_recv",
    "check_recv_anysource",
    "check_reduce",
    "check_reduce_scatter",
    "check_reduce_scatter_base",
    "check_reduce_scatter_tensor_coalesced",
    "check_root_rank",
    "check_root_tensor",
    "check_same_type_and_size",
    "check_scatter",
    "check_send",
    "check_single_tensor",
    "fail",
    "format_sizes",
    "same_type",
    "type_name",
]

BACKEND_NAME = "ProcessGroupGloo"
"""The class name in messages, as torch words them (``ProcessGroupGloo::allreduce: ...``)."""

_LAYOUT_NAMES = {torch.strided: "Strided", torch.sparse_coo: "Sparse"}

Tensors = Sequence[torch.Tensor]
"""A list (or tuple) of tensors, as the collectives take them."""
TensorLists = Sequence[Sequence[torch.Tensor]]
"""A list of tensor lists (``allgather`` outputs, ``scatter`` inputs, ...)."""


class RankArgumentError(RuntimeError):
    """A bad argument only this rank can see (its peers' legitimately differ): the collective
    is refused on every rank rather than left to the others."""


# -- messages --------------------------------------------------------------------------------
def fail(name: str, message: str) -> NoReturn:
    """Raise ``RuntimeError("ProcessGroupGloo::<name>: <message>")``, torch's wording."""
    raise RuntimeError(f"{BACKEND_NAME}::{name}: {message}")


def type_name(tensor: torch.Tensor) -> str:
    """Torch's legacy type string, e.g. ``torch.FloatTensor`` (names dtype, device and layout)."""
    try:
        return tensor.type()
    except Exception:  # a dtype without a legacy name
        return f"{tensor.layout} {tensor.dtype} on {tensor.device.type}"


def format_sizes(sizes: Sequence[int]) -> str:
    """Sizes as torch prints them in these messages: ``(2, 3)``, ``(1)``, ``()``."""
    return "(" + ", ".join(str(s) for s in sizes) + ")"


def _layout_name(layout: torch.layout) -> str:
    return _LAYOUT_NAMES.get(layout, str(layout))


def same_type(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors have the same dtype, layout and device type (torch's ``type_equal``)."""
    return a.dtype == b.dtype and a.layout == b.layout and a.device.type == b.device.type


# -- shared checks ---------------------------------------------------------------------------
def _require_tensor_list(name: str, tensors: Any) -> None:
    """TypeError unless ``tensors`` is a list or tuple of tensors (the group's own check; the
    module API's ``_check_tensor_list``, torch's front-end one, also rejects tuples)."""
    if not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{BACKEND_NAME}::{name}: expected a list of tensors, got {tensors!r}")
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{BACKEND_NAME}::{name}: expected a list of tensors, got an element of type "
                f"{type(t).__name__}"
            )


def _require_tensor_lists(name: str, lists: Any) -> None:
    """TypeError unless ``lists`` is a list or tuple of lists of tensors."""
    if not isinstance(lists, (list, tuple)):
        raise TypeError(f"{BACKEND_NAME}::{name}: expected a list of tensor lists, got {lists!r}")
    for inner in lists:
        _require_tensor_list(name, inner)


def _check_tensor(name: str, tensor: Any, what: str) -> None:
    """TypeError unless ``tensor`` is a tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{BACKEND_NAME}::{name}: {what} must be a tensor, got {type(tensor)}")


def check_root_rank(name: str, root: int, size: int) -> None:
    """``invalid root rank: <root>`` unless ``0 <= root < size``."""
    if not 0 <= root < size:
        fail(name, f"invalid root rank: {root}")


def check_root_tensor(name: str, root_tensor: int, count: int) -> None:
    """``invalid root tensor: <i>`` unless ``0 <= i < count`` (an empty list always fails)."""
    if not 0 <= root_tensor < count:
        fail(name, f"invalid root tensor: {root_tensor}")


def check_non_empty(name: str, tensors: Tensors, what: str = "tensor list") -> None:
    """``requires non-empty <what>`` for an empty list."""
    if len(tensors) == 0:
        fail(name, f"requires non-empty {what}")


def check_single_tensor(name: str, tensors: Tensors, what: str = "tensor list") -> None:
    """``requires a single-element <what>`` unless the list holds exactly one tensor."""
    if len(tensors) != 1:
        fail(name, f"requires a single-element {what}")


def check_dense(name: str, tensors: Tensors) -> None:
    """``only supports dense tensors`` for a sparse (non-strided) tensor; CPU tensors only."""
    for t in tensors:
        if t.layout != torch.strided:
            fail(name, "only supports dense tensors")
    _check_cpu(name, tensors)


def _check_cpu(name: str, tensors: Tensors) -> None:
    """``unsupported device type <type>`` for a tensor that is not on the CPU."""
    for t in tensors:
        if not t.is_cpu:
            fail(name, f"unsupported device type {t.device.type}")


def _check_layout_match(name: str, tensors: Tensors) -> None:
    """``invalid tensor layout at index i (expected Strided, got Sparse)``: layouts must agree."""
    layout = tensors[0].layout
    for i, t in enumerate(tensors):
        if t.layout != layout:
            fail(
                name,
                f"invalid tensor layout at index {i} "
                f"(expected {_layout_name(layout)}, got {_layout_name(t.layout)})",
            )


def check_same_type_and_size(
    name: str, tensors: Tensors, reference: torch.Tensor | None = None, sizes: bool = True
) -> None:
    """``invalid tensor type|size at index i (expected ..., got ...)`` against ``reference``.

    ``reference`` defaults to ``tensors[0]``. Torch numbers the index from the second tensor in
    some collectives (an off-by-one); ours is always the position in ``tensors``.
    """
    if not tensors and reference is None:
        return
    ref = tensors[0] if reference is None else reference
    for i, t in enumerate(tensors):
        if not same_type(t, ref):
            fail(
                name,
                f"invalid tensor type at index {i} (expected {type_name(ref)}, got {type_name(t)})",
            )
        if sizes and t.shape != ref.shape:
            fail(
                name,
                f"invalid tensor size at index {i} "
                f"(expected {format_sizes(ref.shape)}, got {format_sizes(t.shape)})",
            )


_SUPPORTED_PAIRS: set[tuple[torch.dtype, RedOpType | None]] = set()
"""(dtype, op member or None) pairs :func:`check_dtype_supported` already accepted."""


def check_dtype_supported(name: str, dtype: torch.dtype, op: ReduceOpLike | None = None) -> None:
    """Reject a dtype the collectives cannot move, or reduction ``op`` cannot combine.

    Bitwise ops need bool or integer dtypes and AVG/PREMUL_SUM floating or complex ones (torch
    fails these when the work runs); PRODUCT/MIN/MAX/bitwise reject complex, as torch does.
    A pair that passed once passes at once (a ``PREMUL_SUM`` op is checked each time: its
    factor matters).
    """
    member = op.op if type(op) is ReduceOp else op
    if member is not RedOpType.PREMUL_SUM and (member is None or type(member) is RedOpType):
        key = (dtype, member)
        if key in _SUPPORTED_PAIRS:
            return
        _check_dtype_op(name, dtype, op)
        _SUPPORTED_PAIRS.add(key)
        return
    _check_dtype_op(name, dtype, op)


def _check_dtype_op(name: str, dtype: torch.dtype, op: ReduceOpLike | None) -> None:
    """:func:`check_dtype_supported`, every time."""
    if dtype not in SUPPORTED_DTYPES:
        supported = ", ".join(sorted(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES))
        fail(name, f"invalid scalar type {dtype} (supported: {supported})")
    if op is None:
        return
    reduce_op = to_reduce_op(op)
    member = reduce_op.op
    if member == RedOpType.UNUSED:
        fail(name, f"unsupported reduction operation ReduceOp.{member.name}")
    if member == RedOpType.PREMUL_SUM and reduce_op._factor is None:
        fail(name, "ReduceOp.PREMUL_SUM requires a factor (build it with make_premul_sum)")
    if dtype.is_complex and member in NOT_FOR_COMPLEX:
        fail(name, f"does not support ReduceOp.{member.name} on complex tensors (dtype {dtype})")
    if member in BITWISE_OPS and (dtype.is_floating_point or dtype.is_complex):
        fail(name, f"Cannot use ReduceOp.{member.name} with non-integral dtype {dtype}")
    if member in (RedOpType.AVG, RedOpType.PREMUL_SUM) and not (
        dtype.is_floating_point or dtype.is_complex
    ):
        fail(name, f"Cannot use ReduceOp.{member.name} with non-floating-point dtype {dtype}")


def _root_rank(opts: RootRankOptions | None) -> int:
    """``opts.rootRank``; 0 (the default) when ``opts`` is None."""
    return 0 if opts is None else opts.rootRank


def _root_tensor(opts: RootTensorOptions | None) -> int:
    """``opts.rootTensor``; 0 (the default) when ``opts`` is None."""
    return 0 if opts is None else opts.rootTensor


def _reduce_op(opts: ReduceOpOptions | None) -> ReduceOpLike:
    """``opts.reduceOp``; SUM (the default) when ``opts`` is None."""
    return RedOpType.SUM if opts is None else opts.reduceOp


# -- broadcast, allreduce, reduce --------------------------------------------------------------
def check_broadcast(
    rank: int, size: int, tensors: Tensors, opts: BroadcastOptions | None = None
) -> None:
    """``broadcast(tensors, opts)``: valid root rank and tensor; dense, one type and size."""
    name = "broadcast"
    _require_tensor_list(name, tensors)
    check_root_rank(name, _root_rank(opts), size)
    check_root_tensor(name, _root_tensor(opts), len(tensors))
    check_dense(name, tensors)
    check_same_type_and_size(name, tensors)
    check_dtype_supported(name, tensors[0].dtype)


def check_allreduce(
    rank: int, size: int, tensors: Tensors, opts: AllreduceOptions | None = None
) -> None:
    """``allreduce(tensors, opts)``: one layout, type and size; sparse COO only with SUM."""
    name = "allreduce"
    _require_tensor_list(name, tensors)
    check_non_empty(name, tensors)
    _check_layout_match(name, tensors)
    check_same_type_and_size(name, tensors)
    _check_cpu(name, tensors)
    op = _reduce_op(opts)
    layout = tensors[0].layout
    if layout == torch.sparse_coo:
        if reduce_op_of(op) != RedOpType.SUM:
            fail(
                name,
                "unsupported reduction operation "
                "(allreduce of sparse tensors only works with ReduceOp.SUM)",
            )
    elif layout != torch.strided:
        fail(name, f"unsupported layout {_layout_name(layout)}")
    check_dtype_supported(name, tensors[0].dtype, op)


def check_allreduce_coalesced(
    rank: int, size: int, tensors: Tensors, opts: AllreduceCoalescedOptions | None = None
) -> None:
    """``allreduce_coalesced(tensors, opts)``: dense tensors of one type (sizes may differ)."""
    name = "allreduce_coalesced"
    _require_tensor_list(name, tensors)
    check_non_empty(name, tensors)
    _check_layout_match(name, tensors)
    first = tensors[0]
    if not all(same_type(t, first) for t in tensors):
        fail(name, "tensors must all have the same type")
    _check_cpu(name, tensors)
    if first.layout != torch.strided:
        fail(name, "unsupported layout")
    check_dtype_supported(name, first.dtype, _reduce_op(opts))


def check_reduce(rank: int, size: int, tensors: Tensors, opts: ReduceOptions | None = None) -> None:
    """``reduce(tensors, opts)``: root rank and tensor valid; a single dense tensor."""
    name = "reduce"
    _require_tensor_list(name, tensors)
    check_root_rank(name, _root_rank(opts), size)
    check_root_tensor(name, _root_tensor(opts), len(tensors))
    check_single_tensor(name, tensors)
    check_dense(name, tensors)
    check_dtype_supported(name, tensors[0].dtype, _reduce_op(opts))


# -- allgather family --------------------------------------------------------------------------
def check_allgather(
    rank: int, size: int, output_lists: TensorLists, input_tensors: Tensors
) -> None:
    """``allgather(output_lists, input_tensors)``: output list i holds ``len(inputs) * size``
    tensors, all of the inputs' type and size."""
    name = "allgather"
    _require_tensor_lists(name, output_lists)
    _require_tensor_list(name, input_tensors)
    check_non_empty(name, input_tensors, "input tensor list")
    if len(input_tensors) != len(output_lists):
        fail(name, "requires input/output tensor lists to have the same length")
    expected = len(input_tensors) * size
    for i, outputs in enumerate(output_lists):
        if len(outputs) != expected:
            fail(
                name,
                f"invalid output tensor list at index {i} "
                f"(expected length {expected}, got {len(outputs)})",
            )
    check_dense(name, input_tensors)
    reference = input_tensors[0]
    check_same_type_and_size(name, input_tensors, reference)
    for outputs in output_lists:
        check_same_type_and_size(name, outputs, reference)
    check_dtype_supported(name, reference.dtype)


def check_allgather_coalesced(
    rank: int, size: int, output_lists: TensorLists, input_tensors: Tensors
) -> None:
    """``allgather_coalesced(output_lists, input_tensors)``: one output list per rank, whose
    tensor i matches input i in size and type (inputs may differ from one another)."""
    name = "allgather_coalesced"
    _require_tensor_lists(name, output_lists)
    _require_tensor_list(name, input_tensors)
    check_non_empty(name, input_tensors, "input tensor list")
    if len(output_lists) != size:
        fail(name, "output lists should be equal to world size")
    for outputs in output_lists:
        if len(outputs) != len(input_tensors):
            fail(
                name,
                f"invalid output size: (expected length {len(input_tensors)}, got {len(outputs)})",
            )
        for i, (out, inp) in enumerate(zip(outputs, input_tensors, strict=True)):
            if out.shape != inp.shape:
                fail(
                    name,
                    f"invalid size of output tensor at index {i} (expected length "
                    f"{format_sizes(inp.shape)}, got {format_sizes(out.shape)})",
                )
            if not same_type(out, inp):
                fail(
                    name,
                    f"invalid tensor type at index {i} "
                    f"(expected {type_name(inp)}, got {type_name(out)})",
                )
    check_dense(name, input_tensors)
    for t in input_tensors:
        check_dtype_supported(name, t.dtype)


def _check_flat_pair(
    name: str,
    small: torch.Tensor,
    big: torch.Tensor,
    size: int,
    op: ReduceOpLike | None = None,
    where: str = "",
) -> None:
    """``big`` (the gathered or scattered tensor) must be dense, of ``small``'s type, and hold
    ``size`` times its elements."""
    check_dense(name, (small, big))
    if not same_type(big, small):
        fail(
            name,
            f"invalid tensor type{where} (expected {type_name(small)}, got {type_name(big)})",
        )
    expected = small.numel() * size
    if big.numel() != expected:
        big_is, small_is = ("input", "output") if op is not None else ("output", "input")
        fail(
            name,
            f"invalid tensor size{where}: the {big_is} must hold world size ({size}) times the "
            f"{small_is}'s elements (expected numel {expected}, got {big.numel()})",
        )
    check_dtype_supported(name, small.dtype, op)


def check_allgather_base(rank: int, size: int, output: torch.Tensor, input: torch.Tensor) -> None:
    """``_allgather_base(output, input)``: same dtype, ``output.numel() == size * input.numel()``.

    Any output shape with that many elements works (torch's gloo insists on the concatenated
    ``(size * d0, ...)`` shape); the output is filled in flattened order.
    """
    name = "_allgather_base"
    _check_tensor(name, output, "output")
    _check_tensor(name, input, "input")
    _check_flat_pair(name, input, output, size)


def check_allgather_into_tensor_coalesced(
    rank: int, size: int, outputs: Tensors, inputs: Tensors
) -> None:
    """``allgather_into_tensor_coalesced(outputs, inputs)``: pairwise like
    :func:`check_allgather_base`."""
    name = "allgather_into_tensor_coalesced"
    _require_tensor_list(name, outputs)
    _require_tensor_list(name, inputs)
    check_non_empty(name, inputs, "input tensor list")
    if len(outputs) != len(inputs):
        fail(name, "requires input/output tensor lists to have the same length")
    for i, (out, inp) in enumerate(zip(outputs, inputs, strict=True)):
        _check_flat_pair(name, inp, out, size, where=f" at index {i}")


# -- gather, scatter ---------------------------------------------------------------------------
def check_gather(
    rank: int,
    size: int,
    output_lists: TensorLists,
    input_tensors: Tensors,
    opts: GatherOptions | None = None,
) -> None:
    """``gather(output_lists, input_tensors, opts)``: the root passes ``[[size tensors]]`` of the
    input's type and size, other ranks ``[]``."""
    name = "gather"
    _require_tensor_lists(name, output_lists)
    _require_tensor_list(name, input_tensors)
    root = _root_rank(opts)
    check_root_rank(name, root, size)
    check_single_tensor(name, input_tensors, "input tensor list")
    check_dense(name, input_tensors)
    try:
        _check_gather_outputs(name, rank == root, size, output_lists, input_tensors[0])
    except RuntimeError as exc:
        fail_rank_from(exc)
    check_dtype_supported(name, input_tensors[0].dtype)


def check_scatter(
    rank: int,
    size: int,
    output_tensors: Tensors,
    input_lists: TensorLists,
    opts: ScatterOptions | None = None,
) -> None:
    """``scatter(output_tensors, input_lists, opts)``: one output; the root passes
    ``[[size tensors]]`` of the output's type and size, other ranks ``[]``."""
    name = "scatter"
    _require_tensor_list(name, output_tensors)
    _require_tensor_lists(name, input_lists)
    root = _root_rank(opts)
    check_root_rank(name, root, size)
    check_single_tensor(name, output_tensors, "output tensor list")
    check_dense(name, output_tensors)
    try:
        _check_scatter_inputs(name, rank == root, size, input_lists, output_tensors[0])
    except RuntimeError as exc:
        fail_rank_from(exc)
    check_dtype_supported(name, output_tensors[0].dtype)


def fail_rank_from(exc: RuntimeError) -> NoReturn:
    """Raise ``exc``'s message as a :class:`RankArgumentError`."""
    raise RankArgumentError(str(exc)) from None


def _check_gather_outputs(
    name: str, is_root: bool, size: int, output_lists: TensorLists, input: torch.Tensor
) -> None:
    """The root passes ``[[size tensors]]`` of the input's type and size, others ``[]``."""
    if not is_root:
        if len(output_lists) != 0:
            fail(name, "requires empty output on non-root")
        return
    if len(output_lists) != 1:
        fail(name, f"requires a single-element output list containing a list with {size} tensors.")
    if len(output_lists[0]) != size:
        fail(
            name,
            f"Incorrect output list size {len(output_lists[0])}. Output list size should be "
            f"{size}, same as size of the process group.",
        )
    check_same_type_and_size(name, output_lists[0], input)


def _check_scatter_inputs(
    name: str, is_root: bool, size: int, input_lists: TensorLists, output: torch.Tensor
) -> None:
    """The root passes ``[[size tensors]]`` of the output's type and size, others ``[]``."""
    if not is_root:
        if len(input_lists) != 0:
            fail(name, "requires empty input on non-root")
        return
    if len(input_lists) != 1:
        fail(name, f"requires a single-element input list containing a list with {size} tensors.")
    if len(input_lists[0]) != size:
        fail(
            name,
            f"Incorrect input list size {len(input_lists[0])}. Input list size should be "
            f"{size}, same as size of the process group.",
        )
    check_same_type_and_size(name, input_lists[0], output)


# -- reduce_scatter family ---------------------------------------------------------------------
def check_reduce_scatter(
    rank: int,
    size: int,
    output_tensors: Tensors,
    input_lists: TensorLists,
    opts: ReduceScatterOptions | None = None,
) -> None:
    """``reduce_scatter(output_tensors, input_lists, opts)``: one output and one list of ``size``
    inputs of its type; input ``rank`` has the output's size (others may differ, as in torch)."""
    name = "reduce_scatter"
    _require_tensor_list(name, output_tensors)
    _require_tensor_lists(name, input_lists)
    if len(output_tensors) != 1:
        fail(name, "reduce_scatter only supports 1 output")
    if len(input_lists) != len(output_tensors):
        fail(name, "requires input/output tensor lists to have the same length")
    inputs = input_lists[0]
    if len(inputs) != size:
        fail(
            name,
            f"invalid input tensor list size, must be world size (expected {size}, "
            f"got {len(inputs)})",
        )
    output = output_tensors[0]
    check_dense(name, output_tensors)
    check_dense(name, inputs)
    check_same_type_and_size(name, inputs, output, sizes=False)
    if inputs[rank].shape != output.shape:
        fail(
            name,
            f"invalid tensor size at index {rank} "
            f"(expected {format_sizes(output.shape)}, got {format_sizes(inputs[rank].shape)})",
        )
    check_dtype_supported(name, output.dtype, _reduce_op(opts))


def check_reduce_scatter_base(
    rank: int,
    size: int,
    output: torch.Tensor,
    input: torch.Tensor,
    opts: ReduceScatterOptions | None = None,
) -> None:
    """``_reduce_scatter_base(output, input, opts)``: same dtype,
    ``input.numel() == size * output.numel()`` (any shapes; chunks are taken flattened)."""
    name = "_reduce_scatter_base"
    _check_tensor(name, output, "output")
    _check_tensor(name, input, "input")
    _check_flat_pair(name, output, input, size, _reduce_op(opts))


def check_reduce_scatter_tensor_coalesced(
    rank: int,
    size: int,
    outputs: Tensors,
    inputs: Tensors,
    opts: ReduceScatterOptions | None = None,
) -> None:
    """``reduce_scatter_tensor_coalesced(outputs, inputs, opts)``: pairwise like
    :func:`check_reduce_scatter_base`."""
    name = "reduce_scatter_tensor_coalesced"
    _require_tensor_list(name, outputs)
    _require_tensor_list(name, inputs)
    check_non_empty(name, inputs, "input tensor list")
    if len(outputs) != len(inputs):
        fail(name, "requires input/output tensor lists to have the same length")
    op = _reduce_op(opts)
    for i, (out, inp) in enumerate(zip(outputs, inputs, strict=True)):
        _check_flat_pair(name, out, inp, size, op, f" at index {i}")


# -- alltoall ----------------------------------------------------------------------------------
def check_alltoall(
    rank: int,
    size: int,
    output_tensors: Tensors,
    input_tensors: Tensors,
    opts: AllToAllOptions | None = None,
) -> None:
    """``alltoall(output_tensors, input_tensors, opts)``: ``size`` dense tensors each, all of
    one type. Sizes may differ (torch's gloo wants them all equal), but the block a rank sends
    itself must fit: ``outputs[rank]`` holds as many elements as ``inputs[rank]`` (that it
    checks alone: :class:`RankArgumentError`). Blocks between ranks are checked when the ranks
    exchange their sizes, before any data moves."""
    name = "alltoall"
    _require_tensor_list(name, output_tensors)
    _require_tensor_list(name, input_tensors)
    if len(output_tensors) != size:
        fail(
            name, f"output tensor list size {len(output_tensors)} does not match world size {size}"
        )
    if len(input_tensors) != size:
        fail(name, f"input tensor list size {len(input_tensors)} does not match world size {size}")
    check_dense(name, output_tensors)
    check_dense(name, input_tensors)
    check_same_type_and_size(name, input_tensors, sizes=False)
    reference = input_tensors[0]
    if not all(same_type(t, reference) for t in output_tensors):
        fail(name, "input and output tensors must have the same type")
    check_dtype_supported(name, reference.dtype)
    mine, into = input_tensors[rank], output_tensors[rank]
    if mine.numel() != into.numel():  # the block a rank sends itself: only it can check that
        raise RankArgumentError(
            f"{BACKEND_NAME}::{name}: invalid tensor size at index {rank} "
            f"(expected {format_sizes(mine.shape)}, got {format_sizes(into.shape)})"
        )


def _check_split_sizes(name: str, splits: Sequence[int], tensor: torch.Tensor, size: int) -> None:
    """Torch's ``checkSplitSizes``: no splits means dim 0 divides evenly; else ``size``
    non-negative splits summing to dim 0."""
    if len(splits) == 0:
        if tensor.shape[0] % size != 0:
            fail(name, "Tensor's dim 0 does not divide equally across group size")
        return
    if len(splits) != size:
        fail(name, "Number of tensor splits not equal to group size")
    if any(s < 0 for s in splits):
        fail(name, f"Split sizes must be non-negative, got {list(splits)}")
    if sum(splits) != tensor.shape[0]:
        fail(name, "Split sizes doesn't match total dim 0 size")


def check_alltoall_base(
    rank: int,
    size: int,
    output: torch.Tensor,
    input: torch.Tensor,
    output_split_sizes: Sequence[int],
    input_split_sizes: Sequence[int],
    opts: AllToAllOptions | None = None,
) -> None:
    """``alltoall_base(output, input, output_split_sizes, input_split_sizes, opts)``: same type,
    valid dim-0 splits, equal elements per dim-0 row, equal numel when no splits are given."""
    name = "alltoall_base"
    _check_tensor(name, output, "output")
    _check_tensor(name, input, "input")
    check_dense(name, (output, input))
    check_contiguous_input(input)
    if not same_type(output, input):
        fail(name, "input and output tensors must have the same type")
    if output.dim() == 0 or input.dim() == 0:
        fail(name, "requires input and output tensors with at least one dimension")
    _check_split_sizes(name, output_split_sizes, output, size)
    _check_split_sizes(name, input_split_sizes, input, size)
    in_row, out_row = math.prod(input.shape[1:]), math.prod(output.shape[1:])
    if in_row != out_row:
        fail(
            name,
            "input and output tensors must have the same number of elements per dim-0 row "
            f"(input {in_row}, output {out_row})",
        )
    if not output_split_sizes and not input_split_sizes and output.numel() != input.numel():
        fail(
            name,
            "input and output tensors must have the same size without split sizes "
            f"(input numel {input.numel()}, output numel {output.numel()})",
        )
    check_dtype_supported(name, input.dtype)


def check_contiguous_input(input: torch.Tensor) -> None:
    """ValueError "Tensors must be contiguous" (torch's Gloo ``alltoall_base`` wording and
    class) unless ``input`` is contiguous in its suggested memory format (channels-last passes).

    Only the input is checked, as in torch; a non-contiguous output is written through a copy.
    """
    if input.is_contiguous():
        return
    if input.dim() == 4 and input.is_contiguous(memory_format=torch.channels_last):
        return
    if input.dim() == 5 and input.is_contiguous(memory_format=torch.channels_last_3d):
        return
    raise ValueError("Tensors must be contiguous")


# -- point to point ----------------------------------------------------------------------------
def _check_p2p(
    name: str, rank: int, size: int, tensors: Tensors, peer: int | None, tag: int
) -> None:
    """One dense, contiguous, CPU tensor; ``peer`` another rank of the group; a valid tag."""
    _require_tensor_list(name, tensors)
    if len(tensors) != 1:
        raise RuntimeError(f"{BACKEND_NAME}::{name} takes a single tensor")
    tensor = tensors[0]
    if tensor.layout != torch.strided or not tensor.is_contiguous():
        fail(name, f"{'input' if name == 'send' else 'output'} tensor has to be contiguous")
    _check_cpu(name, tensors)
    check_dtype_supported(name, tensor.dtype)
    if peer is not None:
        what = "destination" if name == "send" else "source"
        if not 0 <= peer < size:
            fail(name, f"invalid {what} rank: {peer} (world size {size})")
        if peer == rank:
            fail(
                name,
                f"invalid {what} rank: {what} rank should not be the same as the rank of the "
                "current process",
            )
    if isinstance(tag, bool) or not hasattr(tag, "__index__"):
        raise TypeError(f"{BACKEND_NAME}::{name}: tag must be an int, got {type(tag).__name__}")
    tag = tag.__index__()
    if tag < 0:
        fail(name, f"Tag must be nonnegative, got {tag}")
    if tag > MAX_TAG:
        fail(name, f"tag {tag} is too large (at most {MAX_TAG})")


def check_send(rank: int, size: int, tensors: Tensors, dst: int, tag: int = 0) -> None:
    """``send(tensors, dst, tag)``: one contiguous tensor, another rank, a non-negative tag."""
    _check_p2p("send", rank, size, tensors, dst, tag)


def check_recv(rank: int, size: int, tensors: Tensors, src: int, tag: int = 0) -> None:
    """``recv(tensors, src, tag)``: one contiguous tensor, another rank, a non-negative tag."""
    _check_p2p("recv", rank, size, tensors, src, tag)


def check_recv_anysource(rank: int, size: int, tensors: Tensors, tag: int = 0) -> None:
    """``recv_anysource(tensors, tag)``: one contiguous tensor and a non-negative tag."""
    _check_p2p("recv_anysource", rank, size, tensors, None, tag)
