"""The functional collectives of ``torch.distributed`` (``all_reduce``, ``broadcast``, ...).

Each function takes torch's arguments and runs on the default group or ``group``. With
``async_op=True`` it returns the operation's :class:`~pyc10d.Work`; otherwise it waits and returns
None. As in torch, a rank outside ``group`` gets a warning and None, and does nothing. ``src`` and
``dst`` are global ranks; ``group_src`` and ``group_dst`` are ranks within ``group``.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

import torch

from ..core.reduce_op import (
    RedOpType,
    ReduceOp,
    ReduceOpLike,
    make_premul_sum,
    supports_complex,
)
from ..process_group import ProcessGroup, Work
from ..process_group.options import (
    AllgatherOptions,
    AllreduceCoalescedOptions,
    AllreduceOptions,
    AllToAllOptions,
    BarrierOptions,
    BroadcastOptions,
    GatherOptions,
    ReduceOptions,
    ReduceScatterOptions,
    ScatterOptions,
)
from ..process_group.validation import check_contiguous_input
from . import debug
from .state import group_rank_of, resolve, warn_not_in_group

__all__ = [
    "_all_gather_base",
    "_make_nccl_premul_sum",
    "_reduce_scatter_base",
    "all_gather",
    "all_gather_coalesced",
    "all_gather_into_tensor",
    "all_gather_single",
    "all_reduce",
    "all_reduce_coalesced",
    "all_to_all",
    "all_to_all_single",
    "barrier",
    "broadcast",
    "gather",
    "reduce",
    "reduce_scatter",
    "reduce_scatter_single",
    "reduce_scatter_tensor",
    "scatter",
    "supports_complex",
]


# pyc10d's own group methods: a group whose class keeps the method a function calls takes
# that function's fast path (the group's ``_*_fast`` methods); a user backend's overrides do not.
_GROUP_ALLREDUCE = ProcessGroup.allreduce
_GROUP_BROADCAST = ProcessGroup.broadcast
_GROUP_ALLGATHER = ProcessGroup.all_gather_single
_GROUP_REDUCE_SCATTER = ProcessGroup.reduce_scatter_single
_GROUP_ALLTOALL = ProcessGroup.all_to_all_single


def _fast(pg: ProcessGroup, method: str, own: Any, async_op: Any) -> bool:
    """Whether a call may take its fast path: ``pg``'s ``method`` is pyc10d's own (``own``),
    ``async_op`` a bool (others are converted, or refused, by the option's setter) and the
    debug level below DETAIL (whose cross-rank check the fast paths skip)."""
    return (
        (async_op is False or async_op is True)
        and getattr(type(pg), method, None) is own
        and debug.get_debug_level() is not debug.DebugLevel.DETAIL
    )


def _make_nccl_premul_sum(factor: float | torch.Tensor) -> ReduceOp:
    """A ``PREMUL_SUM`` :class:`ReduceOp` scaling inputs by ``factor`` before summing (torch's
    ``torch.distributed._make_nccl_premul_sum``; pyc10d runs it on CPU, not only under NCCL).

    ``factor`` is a number or a one-element tensor; the op passes ``isinstance(op, ReduceOp)``.
    """
    return make_premul_sum(factor)


# -- argument checks (torch's front-end checks, with its wording) -----------------------------
def _check_single_tensor(param: Any, param_name: str) -> None:
    """TypeError (torch's message) unless ``param`` is a tensor."""
    if not isinstance(param, torch.Tensor):
        raise TypeError(
            f"Invalid function argument. Expected parameter `{param_name}` of type torch.Tensor "
            f"but got {type(param)} instead."
        )


def _check_tensor_list(param: Any, param_name: str) -> None:
    """TypeError (torch's message) unless ``param`` is a list of tensors (a tuple is not)."""
    if not isinstance(param, list):
        raise TypeError(
            f"Invalid function argument. Expected parameter `{param_name}` of type "
            f"List[torch.Tensor] but got {type(param)} instead."
        )
    if not all(isinstance(p, torch.Tensor) for p in param):
        raise TypeError(
            f"Invalid function argument. Expected parameter `{param_name}` of type "
            f"List[torch.Tensor] but got {type(param)} with elements of type "
            f"{[type(p) for p in param]}."
        )


def _ensure_same_dtype(*tensors: torch.Tensor | list[torch.Tensor]) -> None:
    """ValueError unless all tensors share one dtype; a complex dtype matches its real one."""
    first: torch.dtype | None = None
    for item in tensors:
        for tensor in item if isinstance(item, list) else [item]:
            dtype = tensor.dtype.to_real() if tensor.dtype.is_complex else tensor.dtype
            if first is None:
                first = dtype
            elif dtype != first:
                raise ValueError(
                    f"Invalid usage of tensors with different dtypes. "
                    f"Found {first} and {tensor.dtype}"
                )


def _real(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` viewed as real (a trailing dimension of 2) when complex, as torch sends it."""
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


def _root(group: Any, rank: int | None, group_rank: int | None, what: str) -> int:
    """The group rank named by a ``src``/``group_src`` (or ``dst``) pair; one must be given."""
    if rank is None and group_rank is None:
        raise ValueError(f"Must specify {what} (a global rank) or group_{what} (a group rank)")
    return group_rank_of(group, rank, group_rank, what)


def _rooted_list(
    tensor: torch.Tensor,
    tensors: list[torch.Tensor] | None,
    name: str,
    group: Any,
    rank: int | None,
    group_rank: int | None,
    what: str,
) -> tuple[ProcessGroup, int, list[torch.Tensor], str | None] | None:
    """Checks of gather/scatter: ``(group, root, tensors, problem)``, or None for a non-member.

    As in torch the root defaults to global rank 0, and the list (``gather_list`` or
    ``scatter_list``) must be given on the root and only there: ``problem`` is torch's
    ValueError message when it is not (None when it is). Only this rank can see that, so the
    caller refuses the collective on every rank (:func:`_refuse`) before raising it.
    """
    _check_single_tensor(tensor, "tensor")
    if tensors:
        _check_tensor_list(tensors, name)
    tensors = list(tensors or [])
    _ensure_same_dtype(tensor, tensors)
    pg = resolve(group)
    if pg is None:
        return None
    if rank is None and group_rank is None:
        rank = 0
    root = _root(group, rank, group_rank, what)
    role = "destination" if what == "dst" else "source"
    problem = None
    if root == pg.rank() and not tensors:
        problem = f"Argument ``{name}`` must be specified on {role} rank."
    elif root != pg.rank() and tensors:
        problem = f"Argument ``{name}`` must NOT be specified on non-{role} ranks."
    return pg, root, tensors, problem


def _refuse(pg: ProcessGroup, op_name: str, tensor: torch.Tensor, root: int, problem: str) -> None:
    """Take part in the ``op_name`` collective only to refuse it, so that every other rank
    fails it too (quoting ``problem``), then raise torch's ValueError here."""
    refuse = getattr(pg, "_refuse_rooted", None)  # a third-party backend's group has none
    if refuse is not None:
        refuse(op_name, tensor, root, problem)
    raise ValueError(problem)


def _finish(work: Work, async_op: bool) -> Work | None:
    """The Work when ``async_op``; otherwise wait for it (re-raising its error) and return None."""
    if async_op:
        return work
    work.wait()
    return None


def _deprecated(name: str, instead: str) -> None:
    """torch's FutureWarning for a deprecated collective."""
    warnings.warn(
        f"`torch.distributed.{name}` is deprecated. "
        f"Please use `torch.distributed.{instead}` instead.",
        FutureWarning,
        stacklevel=3,
    )


def _will_be_deprecated(name: str) -> None:
    """torch's FutureWarning for the coalesced collectives it plans to deprecate."""
    warnings.warn(
        f"`torch.distributed.{name}` will be deprecated. If you must use it, please revisit our "
        "documentation later at "
        "https://pytorch.org/docs/main/distributed.html#collective-functions",
        FutureWarning,
        stacklevel=3,
    )


# -- broadcast, all_reduce, reduce ---------------------------------------------------------------
def broadcast(
    tensor: torch.Tensor,
    src: int | None = None,
    group: ProcessGroup | None = None,
    async_op: bool = False,
    group_src: int | None = None,
) -> Work | None:
    """Copy ``tensor`` from the source rank to every rank of the group (torch's ``broadcast``).

    The source is global rank ``src`` or group rank ``group_src`` (exactly one must be given).
    """
    _check_single_tensor(tensor, "tensor")
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("broadcast")
        return None
    root = _root(group, src, group_src, "src")
    if _fast(pg, "broadcast", _GROUP_BROADCAST, async_op):
        work = pg._broadcast_fast(tensor, root, async_op)  # None: not the common case
        if work is not None:
            return _finish(work, async_op)
    opts = BroadcastOptions()
    opts.rootRank = root
    opts.rootTensor = 0
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "broadcast", [tensor], root=opts.rootRank)
    return _finish(pg.broadcast([_real(tensor)], opts), async_op)


def all_reduce(
    tensor: torch.Tensor,
    op: ReduceOpLike = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Reduce ``tensor`` across the group in place; every rank gets the result.

    As in torch, complex tensors are reduced as real views; ops without meaning on complex
    numbers (MAX, MIN, PRODUCT, bitwise) raise ValueError for them.
    """
    _check_single_tensor(tensor, "tensor")
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("all_reduce")
        return None
    if type(op) is RedOpType and _fast(pg, "allreduce", _GROUP_ALLREDUCE, async_op):
        work = pg._allreduce_fast(tensor, op, async_op)  # None: not the common case
        if work is not None:
            return _finish(work, async_op)
    if tensor.is_complex() and not supports_complex(op):
        raise ValueError(f"all_reduce does not support {op} on complex tensors")
    opts = AllreduceOptions()
    opts.reduceOp = op
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "all_reduce", [tensor], op=op)
    return _finish(pg.allreduce([_real(tensor)], opts), async_op)


def all_reduce_coalesced(
    tensors: list[torch.Tensor] | torch.Tensor,
    op: ReduceOpLike = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> torch.futures.Future | None:
    """All-reduce several tensors (of one dtype, any shapes) in one operation.

    Like torch: a FutureWarning (it will be deprecated), and with ``async_op`` the Work's
    future is returned, not the Work.
    """
    _will_be_deprecated("all_reduce_coalesced")
    if isinstance(tensors, torch.Tensor):
        tensors = [tensors]
    _check_tensor_list(tensors, "tensor")
    _ensure_same_dtype(tensors)
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("all_reduce_coalesced")
        return None
    if any(t.is_complex() for t in tensors) and not supports_complex(op):
        raise ValueError(f"all_reduce does not support {op} on complex tensors")
    opts = AllreduceCoalescedOptions()
    opts.reduceOp = op
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "all_reduce_coalesced", tensors, op=op)
    work = pg.allreduce_coalesced([_real(t) for t in tensors], opts)
    if async_op:
        return work.get_future()
    work.wait()
    return None


def reduce(
    tensor: torch.Tensor,
    dst: int | None = None,
    op: ReduceOpLike = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
    group_dst: int | None = None,
) -> Work | None:
    """Reduce ``tensor`` across the group onto the destination rank (torch's ``reduce``).

    The destination is global rank ``dst`` or group rank ``group_dst`` (exactly one); only its
    ``tensor`` receives the result.
    """
    _check_single_tensor(tensor, "tensor")
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("reduce")
        return None
    opts = ReduceOptions()
    opts.reduceOp = op
    opts.rootRank = _root(group, dst, group_dst, "dst")
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "reduce", [tensor], op=op, root=opts.rootRank)
    return _finish(pg.reduce([tensor], opts), async_op)


# -- all_gather family ---------------------------------------------------------------------------
def all_gather(
    tensor_list: list[torch.Tensor],
    tensor: torch.Tensor,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Gather every rank's ``tensor`` into ``tensor_list`` (one entry per group rank).

    Complex tensors are gathered as real views, as in torch.
    """
    _check_tensor_list(tensor_list, "tensor_list")
    _check_single_tensor(tensor, "tensor")
    _ensure_same_dtype(tensor_list, tensor)
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("all_gather")
        return None
    opts = AllgatherOptions()
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "all_gather", [tensor])
    work = pg.allgather([[_real(t) for t in tensor_list]], [_real(tensor)], opts)
    return _finish(work, async_op)


def all_gather_single(
    output_tensor: torch.Tensor,
    input_tensor: torch.Tensor,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Gather every rank's ``input_tensor`` into one ``output_tensor``, in group-rank order.

    ``output_tensor`` is the concatenation ``(size * n, ...)`` or the stack ``(size, n, ...)``
    of the inputs, as torch accepts.
    """
    _check_single_tensor(input_tensor, "input_tensor")
    _check_single_tensor(output_tensor, "output_tensor")
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("all_gather_single")
        return None
    if _fast(pg, "all_gather_single", _GROUP_ALLGATHER, async_op):
        work = pg._allgather_fast(output_tensor, input_tensor, async_op)
        if work is not None:
            return _finish(work, async_op)
    opts = AllgatherOptions()
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "all_gather_single", [input_tensor])
    work = pg.all_gather_single(_real(output_tensor), _real(input_tensor), opts)
    return _finish(work, async_op)


def all_gather_into_tensor(
    output_tensor: torch.Tensor,
    input_tensor: torch.Tensor,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """:func:`all_gather_single` under its older name (torch 2.13 deprecates it: FutureWarning)."""
    _deprecated("all_gather_into_tensor", "all_gather_single")
    return all_gather_single(output_tensor, input_tensor, group, async_op)


def _all_gather_base(
    output_tensor: torch.Tensor,
    input_tensor: torch.Tensor,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """:func:`all_gather_single` under torch's private name (deprecated: FutureWarning)."""
    _deprecated("_all_gather_base", "all_gather_single")
    return all_gather_single(output_tensor, input_tensor, group, async_op)


def all_gather_coalesced(
    output_tensor_lists: list[list[torch.Tensor]],
    input_tensor_list: list[torch.Tensor],
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> torch.futures.Future | None:
    """``output_tensor_lists[r][i]`` receives input ``i`` of group rank ``r``, in one operation.

    Like torch: a FutureWarning (it will be deprecated), and with ``async_op`` the Work's
    future is returned, not the Work.
    """
    _will_be_deprecated("all_gather_coalesced")
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("all_gather_coalesced")
        return None
    _check_tensor_list(input_tensor_list, "input_tensor_list")
    _ensure_same_dtype(input_tensor_list)
    if not isinstance(output_tensor_lists, list):
        raise TypeError("Invalid function argument: output_tensor_lists should be a list")
    for output_tensor_list in output_tensor_lists:
        _check_tensor_list(output_tensor_list, "output_tensor_lists")
        _ensure_same_dtype(output_tensor_list)
    opts = AllgatherOptions()
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "all_gather_coalesced", input_tensor_list)
    work = pg.allgather_coalesced(
        [[_real(t) for t in outputs] for outputs in output_tensor_lists],
        [_real(t) for t in input_tensor_list],
        opts,
    )
    if async_op:
        return work.get_future()
    work.wait()
    return None


# -- gather, scatter -----------------------------------------------------------------------------
def gather(
    tensor: torch.Tensor,
    gather_list: list[torch.Tensor] | None = None,
    dst: int | None = None,
    group: ProcessGroup | None = None,
    async_op: bool = False,
    group_dst: int | None = None,
) -> Work | None:
    """Collect every rank's ``tensor`` into ``gather_list`` on the destination rank.

    As in torch: the destination defaults to global rank 0; ``gather_list`` (one tensor per
    group rank) must be given there and only there (ValueError otherwise).
    """
    rooted = _rooted_list(tensor, gather_list, "gather_list", group, dst, group_dst, "dst")
    if rooted is None:
        warn_not_in_group("gather")
        return None
    pg, root, gather_list, problem = rooted
    opts = GatherOptions()
    opts.rootRank = root
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "gather", [tensor], root=root)
    if problem is not None:
        _refuse(pg, "gather", tensor, root, problem)
    outputs = [gather_list] if root == pg.rank() else []
    return _finish(pg.gather(outputs, [tensor], opts), async_op)


def scatter(
    tensor: torch.Tensor,
    scatter_list: list[torch.Tensor] | None = None,
    src: int | None = None,
    group: ProcessGroup | None = None,
    async_op: bool = False,
    group_src: int | None = None,
) -> Work | None:
    """Send ``scatter_list[r]`` from the source rank to group rank ``r``'s ``tensor``.

    As in torch: the source defaults to global rank 0; ``scatter_list`` must be given there and
    only there (ValueError otherwise); complex tensors travel as real views.
    """
    rooted = _rooted_list(tensor, scatter_list, "scatter_list", group, src, group_src, "src")
    if rooted is None:
        warn_not_in_group("scatter")
        return None
    pg, root, scatter_list, problem = rooted
    inputs = [[_real(t) for t in scatter_list]] if root == pg.rank() else []
    opts = ScatterOptions()
    opts.rootRank = root
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "scatter", [tensor], root=root)
    if problem is not None:
        _refuse(pg, "scatter", _real(tensor), root, problem)
    return _finish(pg.scatter([_real(tensor)], inputs, opts), async_op)


# -- reduce_scatter family -----------------------------------------------------------------------
def reduce_scatter(
    output: torch.Tensor,
    input_list: list[torch.Tensor],
    op: ReduceOpLike = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Group rank ``r``'s ``output`` gets the reduction of every rank's ``input_list[r]``."""
    _check_single_tensor(output, "output")
    _check_tensor_list(input_list, "input_list")
    _ensure_same_dtype(output, input_list)
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("reduce_scatter")
        return None
    opts = ReduceScatterOptions()
    opts.reduceOp = op
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "reduce_scatter", [output], op=op)
    return _finish(pg.reduce_scatter([output], [input_list], opts), async_op)


def reduce_scatter_single(
    output: torch.Tensor,
    input: torch.Tensor,
    op: ReduceOpLike = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Reduce ``input`` across the group; group rank ``r`` gets its ``r``-th chunk in ``output``.

    ``input`` is the concatenation ``(size * n, ...)`` or the stack ``(size, n, ...)`` of
    ``output``-sized chunks, as torch accepts.
    """
    _check_single_tensor(output, "output")
    _check_single_tensor(input, "input")
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("reduce_scatter_single")
        return None
    if type(op) is RedOpType and _fast(
        pg, "reduce_scatter_single", _GROUP_REDUCE_SCATTER, async_op
    ):
        work = pg._reduce_scatter_fast(output, input, op, async_op)
        if work is not None:
            return _finish(work, async_op)
    opts = ReduceScatterOptions()
    opts.reduceOp = op
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "reduce_scatter_single", [output], op=op)
    return _finish(pg.reduce_scatter_single(output, input, opts), async_op)


def reduce_scatter_tensor(
    output: torch.Tensor,
    input: torch.Tensor,
    op: ReduceOpLike = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """:func:`reduce_scatter_single` under its older name (torch 2.13 deprecates it)."""
    _deprecated("reduce_scatter_tensor", "reduce_scatter_single")
    return reduce_scatter_single(output, input, op, group, async_op)


def _reduce_scatter_base(
    output: torch.Tensor,
    input: torch.Tensor,
    op: ReduceOpLike = ReduceOp.SUM,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """:func:`reduce_scatter_single` under torch's private name (deprecated: FutureWarning)."""
    _deprecated("_reduce_scatter_base", "reduce_scatter_single")
    return reduce_scatter_single(output, input, op, group, async_op)


# -- all_to_all ----------------------------------------------------------------------------------
def all_to_all_single(
    output: torch.Tensor,
    input: torch.Tensor,
    output_split_sizes: list[int] | None = None,
    input_split_sizes: list[int] | None = None,
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Split ``input`` along dim 0, send part ``r`` to group rank ``r``, concatenate what arrives.

    Without split sizes dim 0 is split evenly; with them, parts may be uneven (torch's rules).
    A non-contiguous ``input`` raises torch's ValueError "Tensors must be contiguous" on this
    rank before anything is sent (``output`` may be non-contiguous).
    """
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("all_to_all_single")
        return None
    _check_single_tensor(output, "output")
    _check_single_tensor(input, "input")
    _ensure_same_dtype(output, input)
    if (
        output_split_sizes is None
        and input_split_sizes is None
        and _fast(pg, "all_to_all_single", _GROUP_ALLTOALL, async_op)
    ):
        work = pg._alltoall_fast(output, input, async_op)
        if work is not None:
            return _finish(work, async_op)
    opts = AllToAllOptions()
    opts.asyncOp = async_op
    out_splits = [] if output_split_sizes is None else list(output_split_sizes)
    in_splits = [] if input_split_sizes is None else list(input_split_sizes)
    check_contiguous_input(input)  # before DETAIL mode's exchange, so no rank is left in it
    debug.check_before_collective(pg, "all_to_all_single", [])
    work = pg.all_to_all_single(_real(output), _real(input), out_splits, in_splits, opts)
    return _finish(work, async_op)


def all_to_all(
    output_tensor_list: list[torch.Tensor],
    input_tensor_list: list[torch.Tensor],
    group: ProcessGroup | None = None,
    async_op: bool = False,
) -> Work | None:
    """Send ``input_tensor_list[r]`` to group rank ``r``; ``output_tensor_list[r]`` receives
    what rank ``r`` sent here."""
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("all_to_all")
        return None
    _check_tensor_list(output_tensor_list, "output_tensor_list")
    _check_tensor_list(input_tensor_list, "input_tensor_list")
    _ensure_same_dtype(output_tensor_list, input_tensor_list)
    opts = AllToAllOptions()
    opts.asyncOp = async_op
    debug.check_before_collective(pg, "all_to_all", [])
    work = pg.alltoall(
        [_real(t) for t in output_tensor_list], [_real(t) for t in input_tensor_list], opts
    )
    return _finish(work, async_op)


# -- barrier -------------------------------------------------------------------------------------
def barrier(
    group: ProcessGroup | None = None,
    async_op: bool = False,
    device_ids: list[int] | None = None,
    timeout: timedelta | None = None,
) -> Work | None:
    """Block until every rank of the group has entered the barrier (or until the Work is waited).

    ``timeout`` (a timedelta) overrides the group's; ``device_ids`` is recorded as torch does
    (there are no devices to pick on CPU).
    """
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("barrier")
        return None
    opts = BarrierOptions()
    opts.asyncOp = async_op
    if timeout is not None:
        opts.timeout = timeout
    if isinstance(device_ids, list):
        opts.device_ids = device_ids
    opts.device = torch.device("cpu")
    debug.check_before_collective(pg, "barrier", [])
    return _finish(pg.barrier(opts), async_op)
