"""``ProcessGroupPyc10d``: pyc10d's engine behind torch's ``torch.distributed.ProcessGroup``.

torch's Python API and its C++ callers (DDP's reducer, functional collectives, DTensor) call the
methods of a ``ProcessGroup``; pybind's trampoline sends those calls to this Python subclass,
which hands the very same tensors to a pyc10d :class:`~pyc10d.process_group.ProcessGroup`
(no copy on the way in or out) and wraps its Work as a torch Work.

torch's backend creator may return a ``ProcessGroup`` subclass, and then uses it as the group
itself (a C++ ``Backend`` cannot be made from Python). So torch does not wrap it in its DETAIL
debug wrapper: under ``TORCH_DISTRIBUTED_DEBUG=DETAIL`` this class checks, before each
collective, that every rank runs the same one (pyc10d's DETAIL check, torch's messages).

Single-tensor calls (allreduce, broadcast, all_gather_single, reduce_scatter_single,
all_to_all_single with even splits, and funcol's one-pair coalesced forms) take the fast paths
``pyc10d.all_reduce`` & co. take (``ProcessGroup._allreduce_fast`` ...): a synchronous call runs
in the caller's thread, an async one starts lazily (see ``process_group.engine``). A synchronous
call from torch's own module function gets None back once done (torch then skips its wait), so
no torch Work is built for it; every other caller gets a :class:`TorchWork`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as torch_dist

from ..api.debug import verify_same_collective
from ..api.monitored import run_monitored_barrier
from ..core.reduce_op import RedOpType
from ..process_group import ProcessGroup
from ..process_group.options import (
    AllgatherOptions,
    AllreduceCoalescedOptions,
    AllreduceOptions,
    AllToAllOptions,
    BarrierOptions,
    BroadcastOptions,
    GatherOptions,
    Options,
    ReduceOptions,
    ReduceScatterOptions,
    ScatterOptions,
)
from ..process_group.work import Work
from ..store.torch_store import TorchStore
from .options import from_torch
from .register import BACKEND_NAME
from .work import TorchWork

Tensors = Sequence[torch.Tensor]

_NO_TIME = timedelta(0)  # torch's kUnsetTimeout (-1 ms) is below it: the group's timeout applies

_TorchAllreduceOptions = torch_dist.AllreduceOptions
_TorchBroadcastOptions = torch_dist.BroadcastOptions
_TorchAllgatherOptions = torch_dist.distributed_c10d.AllgatherOptions
_TorchReduceScatterOptions = torch_dist.ReduceScatterOptions
_TorchAllToAllOptions = torch_dist.AllToAllOptions

_FAST_OPS: dict[Any, RedOpType] = {
    getattr(torch_dist.ReduceOp.RedOpType, member.name): member
    for member in RedOpType
    if member not in (RedOpType.PREMUL_SUM, RedOpType.UNUSED)
}
"""torch's ``RedOpType`` members as pyc10d's, for the fast paths (``PREMUL_SUM`` carries a
factor: it takes the general path)."""


_SYNC_CALLER_NAMES = (
    "all_reduce",
    "broadcast",
    "all_gather_single",
    "reduce_scatter_single",
    "all_to_all_single",
)


def _sync_callers() -> tuple[Any, ...]:
    """The code of torch's module functions that call a group's single-tensor method and, when
    not ``async_op``, only wait on what it returns, or skip the wait when it is None (torch's
    "backends that sync at CPP level"): ``dist.all_reduce``, ``broadcast``,
    ``all_gather_single``, ``reduce_scatter_single`` and ``all_to_all_single``."""
    codes = []
    for name in _SYNC_CALLER_NAMES:
        function = getattr(torch_dist.distributed_c10d, name, None)
        code = getattr(inspect.unwrap(function), "__code__", None) if function else None
        if code is not None:
            codes.append(code)
    return tuple(codes)


_SYNC_CALLER_CODES = _sync_callers()  # kept alive, so that their ids stay theirs
_SYNC_CALLERS = frozenset(map(id, _SYNC_CALLER_CODES))
"""ids of :data:`_SYNC_CALLER_CODES` (hashing a code object hashes its constants, each call)."""


def _finished(work: Work, async_op: bool) -> TorchWork | None:
    """What a fast path returns for pyc10d's ``work``: None once it is waited for, when torch's
    own synchronous function called (it skips its wait then), saving the torch Work it would
    only wait on; else the torch Work (C++ callers such as DDP and funcol, async calls, direct
    ``group.allreduce(...)`` calls). Called by the group's method: frame 2 is its caller."""
    if not async_op:
        try:
            caller = id(sys._getframe(2).f_code)
        except ValueError:  # called from C++ on a thread with no Python frame above
            caller = 0
        if caller in _SYNC_CALLERS:
            work.wait()
            return None
    return TorchWork(work)


def _is_detail() -> bool:
    """True when torch's own debug level is DETAIL (``TORCH_DISTRIBUTED_DEBUG=DETAIL``)."""
    return torch_dist.get_debug_level() == torch_dist.DebugLevel.DETAIL


def _first_tensor(values: Any) -> torch.Tensor | None:
    """The first tensor in ``values`` (a tensor, or lists of them), or None."""
    while isinstance(values, (list, tuple)):
        if not values:
            return None
        values = values[0]
    return values if isinstance(values, torch.Tensor) else None


def _no_backend(kind: str, detail: str = "") -> RuntimeError:
    """torch's error for a device the group has no backend for (``detail`` says more)."""
    return RuntimeError(f"No backend type associated with device type {kind}{detail}")


def _one_tensor(tensors: Any) -> bool:
    """Whether ``tensors`` is a list of one tensor (what torch's single-tensor calls pass)."""
    return type(tensors) is list and len(tensors) == 1 and isinstance(tensors[0], torch.Tensor)


def _two_tensors(output: Any, input: Any) -> bool:
    """Whether ``output`` and ``input`` are both tensors."""
    return isinstance(output, torch.Tensor) and isinstance(input, torch.Tensor)


def _one_pair(outputs: Any, inputs: Any) -> bool:
    """Whether a coalesced call carries a single (output, input) pair of tensors."""
    return (
        type(outputs) is list
        and type(inputs) is list
        and len(outputs) == 1
        and len(inputs) == 1
        and _two_tensors(outputs[0], inputs[0])
    )


def _even(split_sizes: Any, tensor: torch.Tensor, size: int) -> bool:
    """Whether ``split_sizes`` splits ``tensor``'s dim 0 evenly among ``size`` ranks (none given:
    even, as torch reads it); funcol passes the even sizes explicitly."""
    if not split_sizes:
        return True
    if len(split_sizes) != size or tensor.dim() == 0:
        return False
    rows = tensor.shape[0]
    return all(part * size == rows for part in split_sizes)


def _require_cpu(op_name: str, tensors: Any) -> None:
    """Refuse a tensor off the CPU, with torch's "No backend type associated" message."""
    first = _first_tensor(tensors)
    if first is not None and not first.is_cpu:
        kind = first.device.type
        raise _no_backend(
            kind,
            f": the pyc10d backend serves CPU tensors (got one on {first.device} in {op_name}). "
            "torch cannot attach a second device backend beside a Python backend, so "
            f"'cpu:pyc10d,{kind}:...' configs are not supported: make a separate group for "
            f"{kind} tensors",
        )


class ProcessGroupPyc10d(torch_dist.ProcessGroup):
    """A torch ``ProcessGroup`` whose every operation runs on pyc10d (as ProcessGroupGloo does
    on Gloo): the same semantics, messages, timeouts and futures as pyc10d's own group."""

    def __init__(
        self,
        store: torch_dist.Store,
        rank: int,
        size: int,
        timeout: timedelta,
        options: Options | None = None,
    ) -> None:
        super().__init__(rank, size)
        options = options if options is not None else Options()
        options.timeout = timeout
        self.pg = ProcessGroup(TorchStore(store), rank, size, options)
        self._torch_store = store
        self._group_name = ""
        self._group_desc = ""
        self._detail = _is_detail()

    # -- identity (the C++ names are what the trampoline calls) --------------------------------
    def getBackendName(self) -> str:
        """``"pyc10d"`` (also torch's ``name()`` and ``_get_backend_name()``)."""
        return BACKEND_NAME

    name = _get_backend_name = getBackendName

    def getGroupName(self) -> str:
        """The name torch registered the group under (funcol and DeviceMesh resolve it)."""
        return self._group_name

    def setGroupName(self, name: str) -> None:
        """Set by torch right after the creator returns."""
        self._group_name = name

    def getGroupDesc(self) -> str:
        """The group's description (``new_group(group_desc=...)``)."""
        return self._group_desc

    def setGroupDesc(self, desc: str) -> None:
        """Set by torch right after the creator returns."""
        self._group_desc = desc

    @property
    def group_name(self) -> str:
        """torch's ``ProcessGroup.group_name``."""
        return self._group_name

    @property
    def group_desc(self) -> str:
        """torch's ``ProcessGroup.group_desc``."""
        return self._group_desc

    _set_group_name = setGroupName
    _set_group_desc = setGroupDesc

    def get_group_store(self) -> torch_dist.Store:
        """The store torch gave the creator."""
        return self._torch_store

    # -- the device view torch's Python code takes of a group ----------------------------------
    # A C++ group lists the backends registered per device; a Python group cannot register one
    # (c10d's Backend has no Python constructor), so without these torch sees no device at all
    # (``_device_types == []``, ``_get_backend(cpu)`` raises) and its checkpoint state dicts, DCP
    # async_save, FSDP2's group-allocated buffers and FSDP1's optimizer state dict fail.
    supports_splitting = False
    supports_coalescing = False
    supports_time_estimate = False

    @property
    def _device_types(self) -> list[torch.device]:
        """The devices this group serves: the CPU only."""
        return [torch.device("cpu")]

    def _get_backend(self, device: Any) -> ProcessGroupPyc10d:
        """The group stands for its own CPU backend; other devices fail with torch's message."""
        device = torch.device(device)
        if device.type != "cpu":
            raise _no_backend(device.type)
        return self

    def supports_tensor_alloc(self, device: Any) -> bool:
        """No special communication buffers: FSDP2 falls back to ``torch.empty``, as on Gloo."""
        return False

    def _get_sequence_number_for_group(self) -> int:
        """How many collectives this group has issued (the same on every rank)."""
        return self.pg._get_sequence_number_for_group()

    def _set_sequence_number_for_group(self) -> None:
        """Sequence numbers start at 0 on every rank already: nothing to agree on."""

    def set_timeout(self, timeout: timedelta) -> None:
        """The default timeout of later operations."""
        self.pg.set_timeout(timeout)

    _set_default_timeout = set_timeout

    def shutdown(self) -> None:
        """Let issued operations finish (within the timeout), then close connections and join
        threads (idempotent; torch's ``shutdown``)."""
        self.pg.shutdown()

    def abort(self) -> None:
        """Pending operations fail at once, without waiting for peers (torch's ``abort``;
        :meth:`shutdown` lets issued work finish first)."""
        self.pg.abort()

    # -- helpers ------------------------------------------------------------------------------
    def _fast(self, opts: Any, torch_options: type) -> bool:
        """Whether a call with torch's ``opts`` may take pyc10d's fast path (the one
        ``pyc10d.all_reduce`` & co. take): ``opts`` is torch's ``torch_options`` with no
        timeout of its own, and DETAIL is off (its cross-rank check runs on the general path).
        The group's ``_*_fast`` method then declines (None) anything but the common case."""
        return type(opts) is torch_options and not self._detail and opts.timeout < _NO_TIME

    def _reduce_scatter_fast(self, output: Any, input: Any, opts: Any) -> Work | None:
        """pyc10d's reduce-scatter fast path for torch's ``opts`` (None: not the common case)."""
        op = _FAST_OPS.get(opts.reduceOp.op)
        if op is None:
            return None
        return self.pg._reduce_scatter_fast(output, input, op, opts.asyncOp)

    def _checked(self, op_name: str, tensors: Sequence[Any]) -> None:
        """Refuse tensors off the CPU; under DETAIL, check every rank runs the same op."""
        _require_cpu(op_name, tensors)
        if self._detail:
            verify_same_collective(self.pg, op_name, tensors)

    # -- collectives --------------------------------------------------------------------------
    def broadcast(self, tensors: Any, opts: Any = None) -> TorchWork | None:
        """torch ``ProcessGroup.broadcast``."""
        fast = self._fast(opts, _TorchBroadcastOptions) and _one_tensor(tensors)
        if fast and opts.rootTensor == 0:
            async_op = opts.asyncOp
            work = self.pg._broadcast_fast(tensors[0], opts.rootRank, async_op)
            if work is not None:
                return _finished(work, async_op)
        self._checked("broadcast", [tensors])
        return TorchWork(self.pg.broadcast(tensors, from_torch(BroadcastOptions, opts)))

    def allreduce(self, tensors: Any, opts: Any = None) -> TorchWork | None:
        """torch ``ProcessGroup.allreduce`` (dense and sparse)."""
        if self._fast(opts, _TorchAllreduceOptions) and _one_tensor(tensors):
            op = _FAST_OPS.get(opts.reduceOp.op)
            if op is not None:
                async_op = opts.asyncOp
                work = self.pg._allreduce_fast(tensors[0], op, async_op)
                if work is not None:
                    return _finished(work, async_op)
        self._checked("all_reduce", [tensors])
        return TorchWork(self.pg.allreduce(tensors, from_torch(AllreduceOptions, opts)))

    def allreduce_coalesced(self, tensors: Tensors, opts: Any = None) -> TorchWork:
        """torch ``ProcessGroup.allreduce_coalesced``."""
        self._checked("all_reduce_coalesced", tensors)
        options = from_torch(AllreduceCoalescedOptions, opts)
        return TorchWork(self.pg.allreduce_coalesced(tensors, options))

    def reduce(self, tensors: Any, opts: Any = None) -> TorchWork:
        """torch ``ProcessGroup.reduce``."""
        self._checked("reduce", [tensors])
        return TorchWork(self.pg.reduce(tensors, from_torch(ReduceOptions, opts)))

    def allgather(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> TorchWork:
        """torch ``ProcessGroup.allgather``."""
        self._checked("all_gather", [input_tensors])
        options = from_torch(AllgatherOptions, opts)
        return TorchWork(self.pg.allgather(output_tensors, input_tensors, options))

    def _allgather_base(
        self, output: torch.Tensor, input: torch.Tensor, opts: Any = None
    ) -> TorchWork | None:
        """torch ``ProcessGroup._allgather_base`` (``all_gather_into_tensor``)."""
        if self._fast(opts, _TorchAllgatherOptions) and _two_tensors(output, input):
            async_op = opts.asyncOp
            work = self.pg._allgather_fast(output, input, async_op)
            if work is not None:
                return _finished(work, async_op)
        self._checked("_allgather_base", [input])
        options = from_torch(AllgatherOptions, opts)
        return TorchWork(self.pg._allgather_base(output, input, options))

    all_gather_single = _allgather_base

    def allgather_coalesced(
        self, output_lists: Sequence[Tensors], input_list: Tensors, opts: Any = None
    ) -> TorchWork:
        """torch ``ProcessGroup.allgather_coalesced``."""
        self._checked("all_gather_coalesced", input_list)
        options = from_torch(AllgatherOptions, opts)
        return TorchWork(self.pg.allgather_coalesced(output_lists, input_list, options))

    def allgather_into_tensor_coalesced(
        self, outputs: Tensors, inputs: Tensors, opts: Any = None
    ) -> TorchWork:
        """torch ``ProcessGroup.allgather_into_tensor_coalesced`` (funcol's
        ``all_gather_tensor`` sends one pair: that takes the single op's fast path, which moves
        the same messages)."""
        if _one_pair(outputs, inputs) and self._fast(opts, _TorchAllgatherOptions):
            work = self.pg._allgather_fast(outputs[0], inputs[0], opts.asyncOp)
            if work is not None:
                return TorchWork(work)
        self._checked("all_gather_into_tensor_coalesced", inputs)
        options = from_torch(AllgatherOptions, opts)
        return TorchWork(self.pg.allgather_into_tensor_coalesced(outputs, inputs, options))

    all_gather_single_coalesced = allgather_into_tensor_coalesced

    def gather(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> TorchWork:
        """torch ``ProcessGroup.gather``."""
        self._checked("gather", [input_tensors])
        options = from_torch(GatherOptions, opts)
        return TorchWork(self.pg.gather(output_tensors, input_tensors, options))

    def scatter(self, output_tensors: Any, input_tensors: Any, opts: Any = None) -> TorchWork:
        """torch ``ProcessGroup.scatter``."""
        self._checked("scatter", [output_tensors])
        options = from_torch(ScatterOptions, opts)
        return TorchWork(self.pg.scatter(output_tensors, input_tensors, options))

    def reduce_scatter(
        self, output_tensors: Any, input_tensors: Any, opts: Any = None
    ) -> TorchWork:
        """torch ``ProcessGroup.reduce_scatter``."""
        self._checked("reduce_scatter", [output_tensors])
        options = from_torch(ReduceScatterOptions, opts)
        return TorchWork(self.pg.reduce_scatter(output_tensors, input_tensors, options))

    def _reduce_scatter_base(
        self, output: torch.Tensor, input: torch.Tensor, opts: Any = None
    ) -> TorchWork | None:
        """torch ``ProcessGroup._reduce_scatter_base`` (``reduce_scatter_tensor``)."""
        if self._fast(opts, _TorchReduceScatterOptions) and _two_tensors(output, input):
            work = self._reduce_scatter_fast(output, input, opts)
            if work is not None:
                return _finished(work, opts.asyncOp)
        self._checked("_reduce_scatter_base", [input])
        options = from_torch(ReduceScatterOptions, opts)
        return TorchWork(self.pg._reduce_scatter_base(output, input, options))

    reduce_scatter_single = _reduce_scatter_base

    def reduce_scatter_tensor_coalesced(
        self, outputs: Tensors, inputs: Tensors, opts: Any = None
    ) -> TorchWork:
        """torch ``ProcessGroup.reduce_scatter_tensor_coalesced`` (funcol's
        ``reduce_scatter_tensor`` sends one pair: that takes the single op's fast path)."""
        if _one_pair(outputs, inputs) and self._fast(opts, _TorchReduceScatterOptions):
            work = self._reduce_scatter_fast(outputs[0], inputs[0], opts)
            if work is not None:
                return TorchWork(work)
        self._checked("reduce_scatter_tensor_coalesced", inputs)
        options = from_torch(ReduceScatterOptions, opts)
        return TorchWork(self.pg.reduce_scatter_tensor_coalesced(outputs, inputs, options))

    reduce_scatter_single_coalesced = reduce_scatter_tensor_coalesced

    def alltoall_base(
        self,
        output: torch.Tensor,
        input: torch.Tensor,
        output_split_sizes: Sequence[int],
        input_split_sizes: Sequence[int],
        opts: Any = None,
    ) -> TorchWork | None:
        """torch ``ProcessGroup.alltoall_base`` (``all_to_all_single``)."""
        if (
            self._fast(opts, _TorchAllToAllOptions)
            and _two_tensors(output, input)
            and _even(output_split_sizes, output, self.size())
            and _even(input_split_sizes, input, self.size())
        ):
            async_op = opts.asyncOp
            work = self.pg._alltoall_fast(output, input, async_op)
            if work is not None:
                return _finished(work, async_op)
        self._checked("all_to_all_single", [input])
        options = from_torch(AllToAllOptions, opts)
        return TorchWork(
            self.pg.alltoall_base(
                output, input, list(output_split_sizes), list(input_split_sizes), options
            )
        )

    all_to_all_single = alltoall_base

    def alltoall(
        self, output_tensors: Tensors, input_tensors: Tensors, opts: Any = None
    ) -> TorchWork:
        """torch ``ProcessGroup.alltoall``."""
        self._checked("all_to_all", input_tensors)
        options = from_torch(AllToAllOptions, opts)
        return TorchWork(self.pg.alltoall(output_tensors, input_tensors, options))

    def barrier(self, opts: Any = None) -> TorchWork:
        """torch ``ProcessGroup.barrier``."""
        self._checked("barrier", [])
        return TorchWork(self.pg.barrier(from_torch(BarrierOptions, opts)))

    def monitored_barrier(
        self, timeout: timedelta | None = None, wait_all_ranks: bool = False
    ) -> None:
        """Gloo's ``monitored_barrier``: rank 0 names the ranks that missed ``timeout``.

        torch's ``dist.monitored_barrier`` accepts only groups named "gloo"; call this method
        (or ``pyc10d.monitored_barrier``'s semantics through it) on a pyc10d group instead.
        """
        run_monitored_barrier(self.pg, timeout, wait_all_ranks)

    # -- point to point -----------------------------------------------------------------------
    def send(self, tensors: Tensors, dstRank: int, tag: int = 0) -> TorchWork:
        """torch ``ProcessGroup.send``."""
        _require_cpu("send", tensors)
        return TorchWork(self.pg.send(list(tensors), dstRank, tag))

    def recv(self, tensors: Tensors, srcRank: int, tag: int = 0) -> TorchWork:
        """torch ``ProcessGroup.recv``."""
        _require_cpu("recv", tensors)
        return TorchWork(self.pg.recv(list(tensors), srcRank, tag))

    def recv_anysource(self, tensors: Tensors, tag: int = 0) -> TorchWork:
        """torch ``ProcessGroup.recv_anysource``."""
        _require_cpu("recv_anysource", tensors)
        return TorchWork(self.pg.recv_anysource(list(tensors), tag))

    def __repr__(self) -> str:
        return f"<ProcessGroupPyc10d rank={self.rank()} size={self.size()} {self._group_name!r}>"
