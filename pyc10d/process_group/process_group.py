"""``ProcessGroup``: every collective on CPU tensors with torch's semantics (ProcessGroupGloo).

Each call validates its arguments with torch's messages (raising before anything is sent, so
the group stays usable), takes the next sequence number, and queues the operation on the
engine; the returned :class:`Work` completes when the worker thread has run the algorithm.

State after errors: a validation error consumes nothing, except where only this rank can see
it (a gather root's output list, a scatter root's input list, a list passed on a non-root): then
this rank takes part in the collective only to refuse it, so that every rank fails that same
collective (quoting this rank's error) instead of a later one. A collective that fails on one
rank fails on every rank that takes part, a late one included (see :mod:`.outcome`); a
timed-out one fails with "Timed out waiting {N}ms" naming the ranks at fault, and its late
messages are discarded; the group stays usable for later operations that every rank issues.
When a peer dies, the transport is failed: every pending and later operation raises an error
naming the dead rank (make a new group to continue). ``shutdown()`` first lets the operations
already issued finish (within the group's timeout), as Gloo does; ``abort()`` does not.
"""

from __future__ import annotations

import enum
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch

from ..collectives import allreduce as allreduce_algos
from ..collectives import broadcast as broadcast_algos
from ..collectives import exchange
from ..collectives.context import OpContext
from ..collectives.reduction import finish_average, reduce_into
from ..collectives.sparse import sparse_allreduce
from ..core.errors import (
    CollectiveAbandonedError,
    DistBackendError,
    TransportTimeout,
    fresh_error,
    with_context,
)
from ..core.reduce_op import RedOpType, ReduceOp, ReduceOpLike, reduce_op_of
from ..core.tags import Signature, p2p_tag
from ..core.tensor_bytes import byte_view, flat_contiguous
from ..core.timeouts import Deadline
from ..store import PrefixStore, Store
from ..transport import make_transport
from ..transport.base import Transport
from ..transport.factory import make_arena
from ..transport.shm.arena import ShmArena
from . import outcome
from . import validation as check
from .engine import Engine
from .issue_order import IssueOrder
from .options import (
    AllgatherOptions,
    AllreduceCoalescedOptions,
    AllreduceOptions,
    AllToAllOptions,
    BarrierOptions,
    BroadcastOptions,
    CollectiveOptions,
    GatherOptions,
    Options,
    ReduceOpOptions,
    ReduceOptions,
    ReduceScatterOptions,
    ScatterOptions,
    resolve_timeout,
)
from .staging import staged_on_host
from .work import Work

Body = Callable[[OpContext], None]


OptionsT = TypeVar("OptionsT", bound=CollectiveOptions)

Factor = float | torch.Tensor | None
"""A PREMUL_SUM factor (None for every other reduction)."""


def _future_value(outputs: list) -> Any:
    """What torch puts in a Work's future: one output list as is, several as a list of lists."""
    if not outputs:
        return []
    return outputs[0] if len(outputs) == 1 else outputs


class _Staged:
    """A contiguous stand-in for a tensor; ``finish()`` copies results back if it was a copy."""

    __slots__ = ("buffer", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        self.buffer = tensor if tensor.is_contiguous() else tensor.contiguous()

    def finish(self) -> None:
        """Write the buffer back into a non-contiguous original."""
        if self.buffer is not self.tensor:
            self.tensor.copy_(self.buffer)


_NO_BACKEND = "No backend type associated with device type {}"
"""torch's RuntimeError for a device (or a bare group) that has no backend."""

SERVED_DEVICES = ("cuda", "cpu")
"""Device types a connected group serves, as torch's Gloo does (device tensors are staged
through host memory), in the order of torch's ``_device_types``."""


class BackendType(enum.IntEnum):
    """torch's ``ProcessGroup.BackendType``, numbered as in torch (pyc10d's own is ``CUSTOM``)."""

    UNDEFINED = 0
    GLOO = 1
    NCCL = 2
    UCC = 3
    MPI = 4
    XCCL = 5
    CUSTOM = 6


def _is_rank_number(value: object) -> bool:
    """True for an int-like rank (``ProcessGroup(rank, size)``), False for a store."""
    return not isinstance(value, bool) and hasattr(value, "__index__")


class ProcessGroup:
    """A group of ``world_size`` processes running collectives over TCP (torch's ProcessGroup).

    ``ProcessGroup(store, rank, world_size, options=None)`` connects the ranks (the group that
    torch's ``ProcessGroupGloo`` is). ``ProcessGroup(rank, size)``, torch's other constructor,
    makes a bare group with no backend: the base of Python backends that override
    ``allreduce``, ``getBackendName``... (its own collectives raise torch's "No backend type
    associated with device type cpu").
    """

    Options = Options
    BackendType = BackendType
    UNDEFINED = BackendType.UNDEFINED
    GLOO = BackendType.GLOO
    NCCL = BackendType.NCCL
    UCC = BackendType.UCC
    MPI = BackendType.MPI
    XCCL = BackendType.XCCL
    CUSTOM = BackendType.CUSTOM

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if (args and _is_rank_number(args[0])) or "size" in kwargs:
            self._init_bare(*args, **kwargs)
        else:
            self._init_connected(*args, **kwargs)

    def _init_bare(self, rank: int, size: int) -> None:
        """torch's ``ProcessGroup(rank, size)``: rank and size only, no transport or threads."""
        self.options = Options()
        self._rank = int(rank)
        self._size = int(size)
        self._backend_name = "undefined"
        self._store: Store | None = None
        self._base_store: Store | None = None
        self._transport: Transport | None = None
        self._arena: ShmArena | None = None
        self._engine: Engine | None = None
        self._finalizer: weakref.finalize | None = None
        self._init_bookkeeping()

    def _init_bookkeeping(self) -> None:
        self._order = IssueOrder()
        self._p2p_engines: dict[object, Engine] = {}
        self._seq = 0
        self._lock = threading.Lock()
        self._running: dict[int, Work] = {}  # collectives not yet finished, for barrier()
        self._bound_device_id: torch.device | None = None
        self._group_desc = ""
        # (dtype, op) pairs whose allreduce checks passed (see _allreduce_fast)
        self._allreduce_checked: set[tuple[torch.dtype, RedOpType]] = set()
        self._abort_requested = False  # abort(): the pending operations' errors say so
        self._close_reason = ["the process group has been shut down"]  # queued ops' error

    def _init_connected(
        self, store: Store, rank: int, world_size: int, options: Options | None = None
    ) -> None:
        """torch's ``ProcessGroup(store, rank, size)`` with a backend: connect to every rank."""
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be a positive int, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
        self.options = options if options is not None else Options()
        self._rank = rank
        self._size = world_size
        self._backend_name = "pyc10d"
        self._base_store = store  # what split_group builds its groups' stores on
        generation = store.add(f"pyc10d/process_groups/{rank}", 1)
        self._store = PrefixStore(f"pyc10d/pg{generation}", store)
        setup = Deadline(self.options.timeout)  # connecting must finish within the group timeout
        self._transport = transport = make_transport(
            self._store,
            rank,
            world_size,
            setup,
            bind_host=self.options.bind_host,
            advertise_host=self.options.advertise_host,
            lazy=self.options.lazy_init,
        )
        try:
            self._arena = make_arena(
                self._store, rank, world_size, setup, transport.peer_failure, self.options.lazy_init
            )
        except BaseException:
            transport.close()
            raise
        self._init_bookkeeping()
        name = f"pyc10d-pg{generation}-r{rank}"
        self._engine = Engine(self.options.threads, name)
        self._finalizer = weakref.finalize(
            self,
            ProcessGroup._shutdown,
            self._engine,
            self._p2p_engines,
            self._transport,
            self._arena,
            self._close_reason,
        )

    # -- identity and settings ----------------------------------------------------------------
    def rank(self) -> int:
        """This process's rank in the group."""
        return self._rank

    def size(self) -> int:
        """Number of processes in the group."""
        return self._size

    def getBackendName(self) -> str:
        """The backend's name: ``"pyc10d"`` (``"undefined"`` for a bare group, as in torch).

        Python backends override it; :meth:`name` returns it, as torch's trampoline does.
        """
        return self._backend_name

    def name(self) -> str:
        """The backend name (torch's ``ProcessGroup.name()``: ``getBackendName()``)."""
        return self.getBackendName()

    def _get_backend_name(self) -> str:
        """The backend name (torch's private ``_get_backend_name``)."""
        return self.getBackendName()

    def _get_backend(self, device: torch.device | str) -> ProcessGroup:
        """The backend serving ``device`` (torch's ``_get_backend``): this group itself for
        ``cpu`` and ``cuda`` (staged through host memory), the devices torch's Gloo serves.

        RuntimeError, torch's "No backend type associated with device type ...", for any
        other device, and for every device on a bare ``ProcessGroup(rank, size)``.
        """
        device_type = torch.device(device).type
        if device_type not in SERVED_DEVICES or self._engine is None:
            raise RuntimeError(_NO_BACKEND.format(device_type))
        return self

    @property
    def _device_types(self) -> list[torch.device]:
        """The devices with a backend (torch's ``_device_types``); ``[]`` for a bare group."""
        return [] if self._engine is None else [torch.device(d) for d in SERVED_DEVICES]

    @property
    def bound_device_id(self) -> torch.device | None:
        """The device bound with ``init_process_group(device_id=...)`` (None: none, as on CPU)."""
        return self._bound_device_id

    @bound_device_id.setter
    def bound_device_id(self, device: torch.device | None) -> None:
        self._bound_device_id = device

    @property
    def group_name(self) -> str:
        """The group's name (torch's ``group_name``; ``Options.group_name``)."""
        return self.options.group_name

    def _set_group_name(self, name: str) -> None:
        """Set :attr:`group_name` (torch's private setter)."""
        self.options.group_name = name

    @property
    def group_desc(self) -> str:
        """The group's description (torch's ``group_desc``)."""
        return self._group_desc

    def _set_group_desc(self, desc: str) -> None:
        """Set :attr:`group_desc` (torch's private setter)."""
        self._group_desc = desc

    def set_timeout(self, timeout: timedelta) -> None:
        """Set the default timeout of later operations (torch's ``set_timeout``)."""
        self.options.timeout = timeout

    def _set_default_timeout(self, timeout: timedelta) -> None:
        """Alias of :meth:`set_timeout` (torch's private name)."""
        self.set_timeout(timeout)

    def _get_sequence_number_for_group(self) -> int:
        """How many collectives this group has issued (the same on every rank)."""
        with self._lock:
            return self._seq

    def split_group(
        self,
        ranks: Sequence[int],
        timeout: timedelta | None = None,
        opts: Options | None = None,
        group_name: str | None = None,
        group_desc: str | None = None,
    ) -> ProcessGroup | None:
        """A group of this group's ``ranks``; None on the others (torch's ``split_group``; see
        :func:`pyc10d.process_group.split.split_group`)."""
        from .split import split_group  # it builds ProcessGroups: imported on use

        return split_group(self, ranks, timeout, opts, group_name, group_desc)

    def merge_remote_group(
        self,
        store: Store,
        size: int,
        timeout: timedelta,
        group_name: str | None = None,
        group_desc: str | None = None,
    ) -> ProcessGroup:
        """One group of ``size`` processes of several jobs over ``store`` (torch's
        ``merge_remote_group``; see :func:`pyc10d.process_group.split.merge_remote_group`)."""
        from .split import merge_remote_group

        return merge_remote_group(self, store, size, timeout, group_name, group_desc)

    def _set_sequence_number_for_group(self) -> None:
        """torch's: make the ranks' sequence numbers agree. They start at 0 on every rank and
        advance together (as in torch's Gloo, whose version does nothing): nothing to do."""

    def shutdown(self) -> None:
        """Let the operations already issued finish (within the group's timeout, as Gloo's
        destructor drains its queue), then close connections and join threads; idempotent."""
        if self._finalizer is not None and self._finalizer.alive:
            self._drain()
            self._finalizer()

    def abort(self) -> None:
        """torch's ``abort()``: close at once, without waiting for the peers; pending operations
        fail, saying that the group was aborted."""
        if self._finalizer is not None and self._finalizer.alive:
            self._abort_requested = True
            self._close_reason[0] = "the process group was aborted"
            self._finalizer()

    def _why(self) -> str:
        """What an operation's error says first once :meth:`abort` was called (else nothing)."""
        return "the process group was aborted: " if self._abort_requested else ""

    def _drain(self) -> None:
        """Wait (up to the group's timeout in all) for every collective issued so far, unless
        called from one of the group's own worker threads (which may be running one)."""
        engine = self._engine
        if engine is None or engine.is_worker(threading.current_thread()):
            return
        with self._lock:
            pending = list(self._running.values())
        deadline = Deadline(self.options.timeout)
        for work in pending:
            work._run_queued(run_here=False)  # a Work whose caller meant to run it: wake one
        for work in pending:
            remaining = deadline.remaining()
            if not work._wait_done(None if math.isinf(remaining) else remaining):
                return

    def _is_shut_down(self) -> bool:
        """True once :meth:`shutdown` (or ``destroy_process_group``) has closed this group."""
        return self._finalizer is not None and not self._finalizer.alive

    def _require_backend(self) -> Engine:
        """The engine; torch's RuntimeError on a bare ``ProcessGroup(rank, size)``."""
        if self._engine is None:
            raise RuntimeError(_NO_BACKEND.format("cpu"))
        return self._engine

    @staticmethod
    def _shutdown(
        engine: Engine, p2p: dict, transport: Transport, arena: ShmArena | None, reason: list
    ) -> None:
        transport.close()  # wakes running operations with an error
        if arena is not None:
            arena.abort()
        engine.shutdown(reason[0])  # fails the queued ones with ``reason``
        for p2p_engine in list(p2p.values()):
            p2p_engine.shutdown(reason[0])
        if arena is not None:
            arena.close()

    # -- running operations -------------------------------------------------------------------
    def _failed(self, op_type: str, seq: int, error: DistBackendError) -> DistBackendError:
        """``error`` (same class, ``peer`` kept) with this rank and operation in its message."""
        return with_context(error, f"[rank {self._rank}] {op_type} (#{seq}) failed: {self._why()}")

    def _run(
        self, op_type: str, seq: int, timeout: timedelta, body: Body, ordered: bool = False
    ) -> None:
        """Run collective ``seq``'s ``body``; ``ordered``: every collective issued before it is
        known to be finished already (it need not wait for its turn at the arena)."""
        transport = self._transport
        error = transport.error
        if error is not None:
            raise self._failed(op_type, seq, error)
        deadline = Deadline(timeout)
        started = time.monotonic()
        order = self._order
        ctx = OpContext(
            transport,
            self._rank,
            self._size,
            seq,
            deadline,
            arena=self._arena,
            take_turn=None if ordered else lambda: order.wait_turn(seq, deadline),
        )
        try:
            with torch._C._InferenceMode(True):  # torch.inference_mode(), minus its overhead
                body(ctx)
            gave_up = transport.abandoned(seq)  # a peer gave up while this rank only sent
            if gave_up is not None:
                raise fresh_error(gave_up)
        except BaseException as exc:
            final = self._give_up(op_type, seq, deadline, started, exc)
            if final is exc:
                raise
            raise final from (None if isinstance(exc, TransportTimeout) else exc)

    def _give_up(
        self, op_type: str, seq: int, deadline: Deadline, started: float, exc: BaseException
    ) -> BaseException:
        """Collective ``seq`` failed here with ``exc``: tell the peers (so that none of them
        keeps a result of it) and return the error to raise, naming the ranks at fault."""
        arena, transport = self._arena, self._transport
        in_arena = arena is not None and arena.holder == seq
        if arena is not None:
            arena.abandon(seq, timed_out=isinstance(exc, TransportTimeout))
        if not isinstance(exc, DistBackendError):  # a bug, or an interrupt: still tell them
            if not in_arena:
                outcome.tell_peers(transport, seq, exc)
            return exc
        final: DistBackendError = exc
        own_timeout = isinstance(exc, TransportTimeout) and bool(exc.ranks) and not in_arena
        if isinstance(exc, CollectiveAbandonedError):
            final = outcome.from_peer(exc, self._rank, started, transport)
        elif own_timeout:
            final = outcome.timeout_error(exc.ranks, exc.seconds, seq)
        if not in_arena and transport.error is None:
            outcome.tell_peers(transport, seq, final)
            if own_timeout:
                grace = outcome.grace_seconds(deadline.seconds)
                final = outcome.widen_blame(transport, exc, self._rank, seq, grace)
        return self._failed(op_type, seq, final)

    def _refuse(self, op_type: str, sig: Signature, reason: str, opts: object) -> None:
        """Take part in the next collective only to refuse it (this rank's arguments are wrong
        where only it can tell): every peer fails it, quoting ``reason``; this rank's caller
        raises its own error."""
        refusal = CollectiveOptions()
        refusal.timeout = getattr(opts, "timeout", refusal.timeout)

        def body(ctx: OpContext) -> None:
            exchange.refuse(ctx, sig, reason)

        try:
            self._collective(op_type, refusal, [], body)
        except DistBackendError:  # shut down: nobody is left to tell
            pass

    def _refuse_rooted(self, op_type: str, tensor: torch.Tensor, root: int, reason: str) -> None:
        """:meth:`_refuse` a ``gather`` or ``scatter`` of ``tensor`` (this rank's input or
        output) rooted at ``root`` (the module API's checks of ``gather_list`` and
        ``scatter_list`` use it); nothing on a bare ``ProcessGroup(rank, size)``."""
        if self._engine is None:
            return
        sig = _rooted_signature(op_type, tensor, root)
        self._refuse(op_type, sig, reason, CollectiveOptions())

    def _collective(
        self, op_type: str, opts: CollectiveOptions, outputs: list, body: Body, inputs: Any = None
    ) -> Work:
        """Issue collective ``body`` (the next sequence number) and return its Work.

        A caller that waits at once (``opts.asyncOp`` False, the module API's
        ``async_op=False``) while every collective issued before is finished runs it right
        here, without the engine. Otherwise it is queued deferred (see :mod:`.engine`):
        ``wait()`` runs it in the waiting thread, or a worker starts it when someone asks about
        it (``get_future()``, ``is_completed()``...) or after ``engine.DEFER_S`` at the latest.
        """
        timeout = resolve_timeout(opts.timeout, self.options.timeout)
        return self._issue(op_type, timeout, opts.asyncOp, outputs, body, inputs)

    def _issue(
        self,
        op_type: str,
        timeout: timedelta,
        async_op: bool,
        outputs: list,
        body: Body,
        inputs: Any = None,
    ) -> Work:
        """:meth:`_collective` with its options read: ``timeout`` (resolved) and ``async_op``."""
        engine = self._engine
        if engine is None:
            raise RuntimeError(_NO_BACKEND.format("cpu"))
        with self._lock:
            self._seq += 1
            seq = self._seq
            work = Work(op_type, seq, outputs, group=self, inputs=inputs, timeout=timeout)
            self._running[seq] = work
        value = _future_value(outputs)
        if async_op is False and self._order.is_turn(seq) and not engine._stopped:
            self._run_now(work, op_type, seq, timeout, body, value)
            return work

        def run() -> Any:
            try:
                self._run(op_type, seq, timeout, body)
            finally:
                self._retire(seq)
            return value

        try:
            return engine.submit(work, run, wake=False)
        except BaseException:  # shut down: it will never run
            self._retire(seq)
            raise

    def _retire(self, seq: int) -> None:
        """Collective ``seq`` is over (run or not): let later ones take their turn."""
        self._order.finish(seq)
        with self._lock:
            self._running.pop(seq, None)

    def _run_now(
        self, work: Work, op_type: str, seq: int, timeout: timedelta, body: Body, value: Any
    ) -> None:
        """Run collective ``seq`` in the calling thread (its turn: nothing earlier is pending)
        and complete ``work`` with ``value`` (or fail it: ``wait()`` raises the error)."""
        work._start()
        try:
            self._run(op_type, seq, timeout, body, ordered=True)
        except BaseException as exc:  # the error belongs to the Work, as on a worker thread
            self._retire(seq)
            work._fail(exc)
        else:
            self._retire(seq)
            work._complete(value)

    # -- broadcast ----------------------------------------------------------------------------
    @staged_on_host
    def broadcast(
        self,
        tensors: Any,
        opts: BroadcastOptions | int | None = None,
        root: int | timedelta | None = None,
        timeout: timedelta | None = None,
    ) -> Work:
        """Copy the root's tensor to every rank; ``broadcast(tensor, root, timeout=None)`` (torch's
        short form) also works."""
        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        opts = _options(BroadcastOptions, opts, timeout, root, rootRank=_pick(root, opts))
        check.check_broadcast(self._rank, self._size, tensors, opts)
        root, source = opts.rootRank, tensors[opts.rootTensor]

        def body(ctx: OpContext) -> None:
            staged = _Staged(source)
            broadcast_algos.broadcast(ctx, staged.buffer.view(-1), root)
            staged.finish()
            for tensor in tensors:
                if tensor is not source:
                    tensor.copy_(source)

        return self._collective("broadcast", opts, [tensors], body)

    # -- allreduce ----------------------------------------------------------------------------
    def _reduce_locally(self, tensors: Sequence[torch.Tensor], op: RedOpType) -> torch.Tensor:
        """One contiguous 1-D buffer holding the reduction of this rank's tensors."""
        if len(tensors) == 1 and tensors[0].is_contiguous():
            return tensors[0] if tensors[0].dim() == 1 else tensors[0].view(-1)
        acc = tensors[0].contiguous().view(-1).clone()
        for tensor in tensors[1:]:
            reduce_into(op, acc, flat_contiguous(tensor))
        return acc

    def _prepare_op(self, opts: ReduceOpOptions) -> tuple[RedOpType, Factor]:
        """(our ReduceOp member, the PREMUL_SUM factor or None) of ``opts.reduceOp``."""
        op = reduce_op_of(opts.reduceOp)
        factor = opts.reduceOp.factor if op is ReduceOp.PREMUL_SUM else None
        return op, factor

    def _allreduce_dense(
        self, ctx: OpContext, tensors: Sequence[torch.Tensor], op: RedOpType, factor: Factor
    ) -> None:
        acc = self._reduce_locally(tensors, op)
        if factor is not None:
            acc.mul_(factor)
        allreduce_algos.allreduce(ctx, acc, op)
        if op is ReduceOp.AVG:
            finish_average(acc, self._size * len(tensors))
        for tensor in tensors:
            if tensor.data_ptr() != acc.data_ptr() or not tensor.is_contiguous():
                tensor.copy_(acc.view_as(tensor))

    @staged_on_host
    def allreduce(
        self,
        tensors: Any,
        opts: AllreduceOptions | ReduceOpLike | None = None,
        op: ReduceOpLike | timedelta | None = None,
        timeout: timedelta | None = None,
    ) -> Work:
        """Reduce tensors across ranks in place (several per rank are reduced together).

        Also ``allreduce(tensor, op, timeout)`` and ``allreduce(tensors, op, timeout)``, as in
        torch (``timeout=None``: the group's).
        """
        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        opts = _options(AllreduceOptions, opts, timeout, op, reduceOp=_pick(op, opts))
        check.check_allreduce(self._rank, self._size, tensors, opts)
        op, factor = self._prepare_op(opts)
        if tensors[0].is_sparse:

            def sparse_body(ctx: OpContext) -> None:
                local = tensors[0]
                for tensor in tensors[1:]:
                    local = local + tensor
                result = sparse_allreduce(ctx, local)
                for tensor in tensors:
                    tensor.copy_(result)

            return self._collective("allreduce", opts, [tensors], sparse_body)

        def body(ctx: OpContext) -> None:
            self._allreduce_dense(ctx, tensors, op, factor)

        return self._collective("allreduce", opts, [tensors], body)

    def _allreduce_fast(self, tensor: torch.Tensor, op: RedOpType, async_op: bool) -> Work | None:
        """``allreduce([tensor], op)`` for the module API's common case, or None when it is not
        one (the caller then takes :meth:`allreduce`): a dense, contiguous, real CPU tensor and
        an ``op`` member other than ``PREMUL_SUM``, on a connected group. The checks of
        :meth:`allreduce` that depend only on (dtype, op) run once per pair (same errors)."""
        if self._engine is None or not _plain(tensor):
            return None
        key = (tensor.dtype, op)
        if key not in self._allreduce_checked:
            if op is ReduceOp.PREMUL_SUM:
                return None
            check.check_dtype_supported("allreduce", tensor.dtype, op)
            self._allreduce_checked.add(key)
        flat = tensor if tensor.dim() == 1 else tensor.view(-1)
        size = self._size

        def body(ctx: OpContext) -> None:
            allreduce_algos.allreduce(ctx, flat, op)
            if op is ReduceOp.AVG:
                finish_average(flat, size)

        return self._issue("allreduce", self.options.timeout, async_op, [[tensor]], body)

    def _broadcast_fast(self, tensor: torch.Tensor, root: int, async_op: bool) -> Work | None:
        """``broadcast([tensor], root)`` for the module API's common case (see
        :func:`_plain`), or None when it is not one (the caller then takes :meth:`broadcast`)."""
        if self._engine is None or not _plain(tensor) or not 0 <= root < self._size:
            return None
        check.check_dtype_supported("broadcast", tensor.dtype)  # once per dtype (cached)
        flat = tensor if tensor.dim() == 1 else tensor.view(-1)

        def body(ctx: OpContext) -> None:
            broadcast_algos.broadcast(ctx, flat, root)

        return self._issue("broadcast", self.options.timeout, async_op, [[tensor]], body)

    def _allgather_fast(
        self, output: torch.Tensor, input: torch.Tensor, async_op: bool
    ) -> Work | None:
        """``_allgather_base(output, input)`` for the module API's common case, or None."""
        size = self._size
        if (
            self._engine is None
            or not _plain(output, input)
            or output.dtype != input.dtype
            or output.numel() != input.numel() * size
        ):
            return None
        check.check_dtype_supported("_allgather_base", input.dtype)
        send = input if input.dim() == 1 else input.view(-1)
        chunks = torch.tensor_split(output.view(-1), size)

        def body(ctx: OpContext) -> None:
            exchange.allgather(ctx, send, chunks)

        timeout = self.options.timeout
        return self._issue("_allgather_base", timeout, async_op, [[output]], body, input)

    def _reduce_scatter_fast(
        self, output: torch.Tensor, input: torch.Tensor, op: RedOpType, async_op: bool
    ) -> Work | None:
        """``_reduce_scatter_base(output, input, op)`` for the module API's common case (an
        ``op`` member other than ``PREMUL_SUM``), or None."""
        size = self._size
        if (
            self._engine is None
            or op is ReduceOp.PREMUL_SUM
            or not _plain(output, input)
            or output.dtype != input.dtype
            or input.numel() != output.numel() * size
        ):
            return None
        check.check_dtype_supported("_reduce_scatter_base", output.dtype, op)
        sends = torch.tensor_split(input.view(-1), size)
        out = output if output.dim() == 1 else output.view(-1)

        def body(ctx: OpContext) -> None:
            exchange.reduce_scatter(ctx, sends, out, op)
            if op is ReduceOp.AVG:
                finish_average(out, size)

        timeout = self.options.timeout
        return self._issue("_reduce_scatter_base", timeout, async_op, [[output]], body, input)

    def _alltoall_fast(
        self, output: torch.Tensor, input: torch.Tensor, async_op: bool
    ) -> Work | None:
        """``alltoall_base(output, input, [], [])`` (even splits) for the module API's common
        case: same shapes, dim 0 divisible by the group size; or None."""
        size = self._size
        if (
            self._engine is None
            or not _plain(output, input)
            or output.dtype != input.dtype
            or output.shape != input.shape
            or input.dim() == 0
            or input.shape[0] % size
            or input.shape[0] == 0
        ):
            return None
        check.check_dtype_supported("alltoall_base", input.dtype)
        sends = torch.tensor_split(input.view(-1), size)
        recvs = torch.tensor_split(output.view(-1), size)

        def body(ctx: OpContext) -> None:
            exchange.alltoall(ctx, sends, recvs)

        timeout = self.options.timeout
        return self._issue("alltoall_base", timeout, async_op, [[output]], body, input)

    @staged_on_host
    def allreduce_coalesced(
        self, tensors: list[torch.Tensor], opts: AllreduceCoalescedOptions | None = None
    ) -> Work:
        """Allreduce several tensors of one dtype as one flattened buffer."""
        opts = opts if opts is not None else AllreduceCoalescedOptions()
        check.check_allreduce_coalesced(self._rank, self._size, tensors, opts)
        op, factor = self._prepare_op(opts)

        def body(ctx: OpContext) -> None:
            flat = torch.cat([t.reshape(-1) for t in tensors])
            if factor is not None:
                flat.mul_(factor)
            allreduce_algos.allreduce(ctx, flat, op)
            if op is ReduceOp.AVG:
                finish_average(flat, self._size)
            for tensor, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
                tensor.copy_(part.view_as(tensor))

        return self._collective("allreduce_coalesced", opts, [tensors], body)

    @staged_on_host
    def reduce(
        self,
        tensors: Any,
        opts: ReduceOptions | int | None = None,
        op: ReduceOpLike | None = None,
        root: int | timedelta | None = None,
        timeout: timedelta | None = None,
    ) -> Work:
        """Reduce onto ``opts.rootRank``; ``reduce(tensor, root, op=SUM, timeout=None)`` (torch's
        short form) also works."""
        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        opts = _options(ReduceOptions, opts, timeout, root, rootRank=_pick(root, opts), reduceOp=op)
        check.check_reduce(self._rank, self._size, tensors, opts)
        op_member, factor = self._prepare_op(opts)
        root, target = opts.rootRank, tensors[opts.rootTensor]

        def body(ctx: OpContext) -> None:
            staged = _Staged(target)
            flat = staged.buffer.view(-1)
            if ctx.rank != root:
                flat = flat.clone()  # non-roots keep their input
            if factor is not None:
                flat.mul_(factor)
            allreduce_algos.reduce(ctx, flat, op_member, root)
            if ctx.rank == root:
                if op_member is ReduceOp.AVG:
                    finish_average(flat, self._size)
                staged.finish()

        return self._collective("reduce", opts, [tensors], body)

    # -- allgather ----------------------------------------------------------------------------
    @staged_on_host
    def allgather(
        self,
        output_tensors: Any,
        input_tensors: Any,
        opts: AllgatherOptions | timedelta | None = None,
        timeout: timedelta | None = None,
    ) -> Work:
        """Every rank's input lands in every rank's output list (``[rank * n_inputs + i]``).

        Also torch's short form ``allgather(outputs, input_tensor, timeout=None)``.
        """
        if isinstance(input_tensors, torch.Tensor):
            output_tensors, input_tensors = [output_tensors], [input_tensors]
        opts = _options(AllgatherOptions, opts, timeout)
        check.check_allgather(self._rank, self._size, output_tensors, input_tensors)
        per_rank = len(input_tensors)

        def body(ctx: OpContext) -> None:
            if per_rank == 1 and len(output_tensors) == 1:
                outputs = output_tensors[0]
                if all(t.is_contiguous() for t in outputs):  # straight into the outputs
                    flat_outputs = [t.view(-1) for t in outputs]
                    exchange.allgather(ctx, flat_contiguous(input_tensors[0]), flat_outputs)
                    return
            send = torch.cat([t.reshape(-1) for t in input_tensors])
            gathered = torch.empty(send.numel() * ctx.size, dtype=send.dtype)
            exchange.allgather(ctx, send, list(torch.tensor_split(gathered, ctx.size)))
            sizes = [t.numel() for t in input_tensors] * ctx.size
            pieces = gathered.split(sizes)
            for outputs in output_tensors:
                for index, output in enumerate(outputs):
                    output.copy_(pieces[index].view_as(input_tensors[index % per_rank]))

        return self._collective("allgather", opts, output_tensors, body, input_tensors)

    @staged_on_host
    def _allgather_base(
        self, output: torch.Tensor, input: torch.Tensor, opts: AllgatherOptions | None = None
    ) -> Work:
        """Gather every rank's ``input`` into one tensor ``output`` (rank-major)."""
        opts = opts if opts is not None else AllgatherOptions()
        check.check_allgather_base(self._rank, self._size, output, input)

        def body(ctx: OpContext) -> None:
            staged = _Staged(output)
            chunks = torch.tensor_split(staged.buffer.view(-1), ctx.size)
            exchange.allgather(ctx, flat_contiguous(input), chunks)
            staged.finish()

        return self._collective("_allgather_base", opts, [[output]], body, input)

    all_gather_single = _allgather_base  # torch 2.13's name (``dist.all_gather_single``)

    @staged_on_host
    def allgather_into_tensor_coalesced(
        self,
        outputs: list[torch.Tensor],
        inputs: list[torch.Tensor],
        opts: AllgatherOptions | None = None,
    ) -> Work:
        """``_allgather_base`` for several (output, input) pairs in one operation."""
        opts = opts if opts is not None else AllgatherOptions()
        check.check_allgather_into_tensor_coalesced(self._rank, self._size, outputs, inputs)

        def body(ctx: OpContext) -> None:
            for index, (output, input) in enumerate(zip(outputs, inputs, strict=True)):
                staged = _Staged(output)
                chunks = torch.tensor_split(staged.buffer.view(-1), ctx.size)
                exchange.allgather(ctx.sub_operation(index), flat_contiguous(input), chunks)
                staged.finish()

        return self._collective("allgather_into_tensor_coalesced", opts, [outputs], body, inputs)

    all_gather_single_coalesced = allgather_into_tensor_coalesced  # torch 2.13's name

    @staged_on_host
    def allgather_coalesced(
        self,
        output_lists: list[list[torch.Tensor]],
        input_list: list[torch.Tensor],
        opts: AllgatherOptions | None = None,
    ) -> Work:
        """``output_lists[r][i]`` receives input ``i`` of rank ``r``."""
        opts = opts if opts is not None else AllgatherOptions()
        check.check_allgather_coalesced(self._rank, self._size, output_lists, input_list)

        def body(ctx: OpContext) -> None:
            send = torch.cat([t.reshape(-1) for t in input_list])
            gathered = torch.empty(send.numel() * ctx.size, dtype=send.dtype)
            exchange.allgather(ctx, send, list(torch.tensor_split(gathered, ctx.size)))
            for rank_chunk, outputs in zip(
                torch.tensor_split(gathered, ctx.size), output_lists, strict=True
            ):
                for output, piece in zip(
                    outputs, rank_chunk.split([t.numel() for t in input_list]), strict=True
                ):
                    output.copy_(piece.view_as(output))

        return self._collective("allgather_coalesced", opts, output_lists, body, input_list)

    # -- gather / scatter ---------------------------------------------------------------------
    @staged_on_host
    def gather(
        self,
        output_tensors: Any,
        input_tensors: Any,
        opts: GatherOptions | int | None = None,
        root: int | timedelta | None = None,
        timeout: timedelta | None = None,
    ) -> Work:
        """The root receives every rank's input; ``gather(outputs, input, root, timeout=None)``
        (torch's short form) also works."""
        if isinstance(input_tensors, torch.Tensor):
            output_tensors = [output_tensors] if output_tensors else []
            input_tensors = [input_tensors]
        opts = _options(GatherOptions, opts, timeout, root, rootRank=_pick(root, opts))
        try:
            check.check_gather(self._rank, self._size, output_tensors, input_tensors, opts)
        except check.RankArgumentError as exc:
            sig = _rooted_signature("gather", input_tensors[0], opts.rootRank)
            self._refuse("gather", sig, str(exc), opts)
            raise
        root = opts.rootRank

        def body(ctx: OpContext) -> None:
            send = flat_contiguous(input_tensors[0])
            if ctx.rank != root:
                exchange.gather(ctx, send, [], root)
                return
            staged = [_Staged(t) for t in output_tensors[0]]
            exchange.gather(ctx, send, [s.buffer.view(-1) for s in staged], root)
            for s in staged:
                s.finish()

        return self._collective("gather", opts, output_tensors, body, input_tensors)

    @staged_on_host
    def scatter(
        self,
        output_tensors: Any,
        input_tensors: Any,
        opts: ScatterOptions | int | None = None,
        root: int | timedelta | None = None,
        timeout: timedelta | None = None,
    ) -> Work:
        """The root sends ``inputs[0][r]`` to each rank r; also torch's short form
        ``scatter(output, inputs, root, timeout=None)``."""
        if isinstance(output_tensors, torch.Tensor):
            output_tensors = [output_tensors]
            input_tensors = [input_tensors] if input_tensors else []
        opts = _options(ScatterOptions, opts, timeout, root, rootRank=_pick(root, opts))
        try:
            check.check_scatter(self._rank, self._size, output_tensors, input_tensors, opts)
        except check.RankArgumentError as exc:
            sig = _rooted_signature("scatter", output_tensors[0], opts.rootRank)
            self._refuse("scatter", sig, str(exc), opts)
            raise
        root = opts.rootRank

        def body(ctx: OpContext) -> None:
            staged = _Staged(output_tensors[0])
            sends = [flat_contiguous(t) for t in input_tensors[0]] if ctx.rank == root else []
            exchange.scatter(ctx, sends, staged.buffer.view(-1), root)
            staged.finish()

        return self._collective("scatter", opts, [output_tensors], body, input_tensors)

    # -- reduce-scatter -----------------------------------------------------------------------
    @staged_on_host
    def reduce_scatter(
        self,
        output_tensors: Any,
        input_tensors: Any,
        opts: ReduceScatterOptions | ReduceOpLike | None = None,
        op: ReduceOpLike | timedelta | None = None,
        timeout: timedelta | None = None,
    ) -> Work:
        """Rank r gets the reduction of every rank's ``inputs[0][r]`` (sizes may differ by r).

        Also torch's short form ``reduce_scatter(output, inputs, op, timeout=None)``.
        """
        if isinstance(output_tensors, torch.Tensor):
            output_tensors, input_tensors = [output_tensors], [input_tensors]
        opts = _options(ReduceScatterOptions, opts, timeout, op, reduceOp=_pick(op, opts))
        check.check_reduce_scatter(self._rank, self._size, output_tensors, input_tensors, opts)
        op, factor = self._prepare_op(opts)

        def body(ctx: OpContext) -> None:
            staged = _Staged(output_tensors[0])
            sends = [flat_contiguous(t) for t in input_tensors[0]]
            if factor is not None:
                sends = [t * factor for t in sends]
            out = staged.buffer.view(-1)
            exchange.reduce_scatter(ctx, sends, out, op)
            if op is ReduceOp.AVG:
                finish_average(out, self._size)
            staged.finish()

        return self._collective("reduce_scatter", opts, [output_tensors], body, input_tensors)

    @staged_on_host
    def _reduce_scatter_base(
        self,
        output: torch.Tensor,
        input: torch.Tensor,
        opts: ReduceScatterOptions | None = None,
    ) -> Work:
        """Reduce ``input`` (``size`` equal chunks) so rank r gets chunk r reduced."""
        opts = opts if opts is not None else ReduceScatterOptions()
        check.check_reduce_scatter_base(self._rank, self._size, output, input, opts)
        op, factor = self._prepare_op(opts)

        def body(ctx: OpContext) -> None:
            _reduce_scatter_flat(ctx, output, input, op, factor, self._size)

        return self._collective("_reduce_scatter_base", opts, [[output]], body, input)

    reduce_scatter_single = _reduce_scatter_base  # torch 2.13's name

    @staged_on_host
    def reduce_scatter_tensor_coalesced(
        self,
        outputs: list[torch.Tensor],
        inputs: list[torch.Tensor],
        opts: ReduceScatterOptions | None = None,
    ) -> Work:
        """``_reduce_scatter_base`` for several (output, input) pairs."""
        opts = opts if opts is not None else ReduceScatterOptions()
        check.check_reduce_scatter_tensor_coalesced(self._rank, self._size, outputs, inputs, opts)
        op, factor = self._prepare_op(opts)

        def body(ctx: OpContext) -> None:
            for index, (output, input) in enumerate(zip(outputs, inputs, strict=True)):
                _reduce_scatter_flat(
                    ctx.sub_operation(index), output, input, op, factor, self._size
                )

        return self._collective("reduce_scatter_tensor_coalesced", opts, [outputs], body, inputs)

    reduce_scatter_single_coalesced = reduce_scatter_tensor_coalesced  # torch 2.13's name

    # -- all-to-all ---------------------------------------------------------------------------
    @staged_on_host
    def alltoall_base(
        self,
        output: torch.Tensor,
        input: torch.Tensor,
        output_split_sizes: list[int],
        input_split_sizes: list[int],
        opts: AllToAllOptions | timedelta | None = None,
        timeout: timedelta | None = None,
    ) -> Work:
        """Split ``input`` along dim 0 (equally, or by ``input_split_sizes``) and exchange.

        ``input`` must be contiguous (ValueError "Tensors must be contiguous", as torch's Gloo
        says); ``timeout`` (torch's keyword) overrides the group's for this call.
        """
        opts = _options(AllToAllOptions, opts, timeout)
        check.check_alltoall_base(
            self._rank, self._size, output, input, output_split_sizes, input_split_sizes, opts
        )

        def body(ctx: OpContext) -> None:
            staged = _Staged(output)
            source = input.contiguous()
            sends = _split_rows(source, input_split_sizes, ctx.size)
            recvs = _split_rows(staged.buffer, output_split_sizes, ctx.size)
            exchange.alltoall(ctx, [flat_contiguous(t) for t in sends], [t.view(-1) for t in recvs])
            staged.finish()

        return self._collective("alltoall_base", opts, [[output]], body, input)

    all_to_all_single = alltoall_base  # torch 2.13's name (``dist.all_to_all_single``)

    @staged_on_host
    def alltoall(
        self,
        output_tensors: list[torch.Tensor],
        input_tensors: list[torch.Tensor],
        opts: AllToAllOptions | None = None,
    ) -> Work:
        """``input_tensors[j]`` of rank i lands in ``output_tensors[i]`` of rank j."""
        opts = opts if opts is not None else AllToAllOptions()
        try:
            check.check_alltoall(self._rank, self._size, output_tensors, input_tensors, opts)
        except check.RankArgumentError as exc:
            sig = exchange.alltoall_signature(output_tensors)
            self._refuse("alltoall", sig, str(exc), opts)
            raise

        def body(ctx: OpContext) -> None:
            staged = [_Staged(t) for t in output_tensors]
            exchange.alltoall(
                ctx,
                [flat_contiguous(t) for t in input_tensors],
                [s.buffer.view(-1) for s in staged],
            )
            for s in staged:
                s.finish()

        return self._collective("alltoall", opts, [output_tensors], body, input_tensors)

    # -- barrier ------------------------------------------------------------------------------
    def barrier(
        self, opts: BarrierOptions | timedelta | None = None, timeout: timedelta | None = None
    ) -> Work:
        """Complete once every rank has called barrier and finished the collectives it issued
        before it (as in torch, a barrier implies waiting for earlier work; their errors stay
        with their own Work). ``barrier(timeout=...)`` is torch's short form."""
        opts = _options(BarrierOptions, opts, timeout)
        with self._lock:
            prior = list(self._running.values())

        def body(ctx: OpContext) -> None:
            # earlier collectives were dequeued before this one: they are running or done
            for work in prior:
                remaining = ctx.deadline.remaining()
                if not work._wait_done(None if math.isinf(remaining) else remaining):
                    raise TransportTimeout(
                        f"{work.op_type} (#{work.seq}) issued before the barrier",
                        ctx.deadline.seconds,
                    )
            exchange.barrier(ctx)

        return self._collective("barrier", opts, [], body)

    # -- point to point -----------------------------------------------------------------------
    def _p2p_engine(self, key: object) -> Engine:
        with self._lock:
            engine = self._p2p_engines.get(key)
            if engine is None:
                engine = Engine(1, f"pyc10d-p2p-{self._rank}-{key}")
                self._p2p_engines[key] = engine
            return engine

    def _p2p_deadline(self) -> Deadline:
        return Deadline(self.options.timeout)

    @staged_on_host
    def send(self, tensors: list[torch.Tensor], dstRank: int, tag: int = 0) -> Work:
        """Send ``tensors[0]`` to ``dstRank`` under ``tag`` (messages to one peer stay ordered)."""
        check.check_send(self._rank, self._size, tensors, dstRank, tag)
        self._require_backend()
        timeout = self.options.timeout
        work = Work("send", -1, [tensors], group=self, timeout=timeout, peer=dstRank)
        work._start()
        try:
            data = flat_contiguous(tensors[0])
            self._transport.send(dstRank, p2p_tag(tag), byte_view(data), self._p2p_deadline())
        except DistBackendError as exc:
            reason = f"[rank {self._rank}] send to rank {dstRank}: {self._why()}{exc}"
            work._fail(DistBackendError(reason))
        else:
            work._complete(tensors)
        return work

    @staged_on_host
    def recv(self, tensors: list[torch.Tensor], srcRank: int, tag: int = 0) -> Work:
        """Receive into ``tensors[0]`` from ``srcRank`` (receives from one peer stay ordered)."""
        check.check_recv(self._rank, self._size, tensors, srcRank, tag)
        return self._recv(tensors, [srcRank], tag, ("recv", srcRank))

    @staged_on_host
    def recv_anysource(self, tensors: list[torch.Tensor], tag: int = 0) -> Work:
        """Receive from whichever rank sends first; ``work.source_rank()`` says which."""
        check.check_recv_anysource(self._rank, self._size, tensors, tag)
        sources = [r for r in range(self._size) if r != self._rank]
        return self._recv(tensors, sources, tag, ("any", None))

    def _recv(self, tensors: list[torch.Tensor], sources: list[int], tag: int, key: object) -> Work:
        self._require_backend()
        peer = sources[0] if len(sources) == 1 else -1
        work = Work("recv", -1, [tensors], group=self, timeout=self.options.timeout, peer=peer)

        def run() -> Any:
            staged = _Staged(tensors[0])
            view = byte_view(staged.buffer)
            try:
                if len(sources) == 1:
                    self._transport.recv(sources[0], p2p_tag(tag), view, self._p2p_deadline())
                    work._source = sources[0]
                else:
                    work._source = self._transport.recv_any(
                        sources, p2p_tag(tag), view, self._p2p_deadline()
                    )
            except DistBackendError as exc:
                raise DistBackendError(f"[rank {self._rank}] recv: {self._why()}{exc}") from exc
            with torch.inference_mode():
                staged.finish()
            return tensors

        return self._p2p_engine(key).submit(work, run)


def _plain(*tensors: torch.Tensor) -> bool:
    """Whether every one of ``tensors`` is a dense, contiguous, real CPU tensor: the common
    case the module API's fast paths take (anything else goes the general way)."""
    for tensor in tensors:
        if (
            not tensor.is_cpu
            or tensor.layout is not torch.strided
            or not tensor.is_contiguous()
            or tensor.is_complex()
        ):
            return False
    return True


def _pick(*values: object) -> Any:
    """The first of ``values`` that is set: not None and not a timedelta (a positional timeout
    of torch's short forms); None if there is none."""
    for value in values:
        if value is not None and not isinstance(value, timedelta):
            return value
    return None


def _timeout_of(name: str, values: Sequence[object]) -> timedelta | None:
    """The one timeout among ``values`` (the keyword and torch's positional slot), or None."""
    found = {value for value in values if isinstance(value, timedelta)}
    if len(found) > 1:
        raise TypeError(f"{name}(): got two different timeouts: {sorted(found)}")
    return found.pop() if found else None


def _options(
    cls: type[OptionsT],
    opts: object,
    timeout: timedelta | None = None,
    *slots: object,
    **fields: object,
) -> OptionsT:
    """The call's options: ``opts`` if it already is a ``cls``, else a new ``cls`` from torch's
    short-form arguments in ``fields`` (a root rank or reduce op; None keeps the default) and
    ``timeout``: the keyword, or a timedelta where torch's short forms take it positionally
    (in ``opts`` or one of the raw positional ``slots``).

    Any other ``opts`` object is used as it is (duck-typed: torch's own option objects pass).
    TypeError for an options object together with a timeout, which no torch overload takes.
    """
    if timeout is None and type(opts) is cls and slots.count(None) == len(slots):  # usual call
        return opts
    if timeout is not None and not isinstance(timeout, timedelta):
        raise TypeError(f"timeout must be a datetime.timedelta, got {type(timeout).__name__}")
    given = _timeout_of(cls.__name__, [opts, timeout, *slots])
    consumed = any(value is opts for value in fields.values())
    if isinstance(opts, cls) or not (opts is None or isinstance(opts, timedelta) or consumed):
        if given is not None:
            raise TypeError(
                f"incompatible arguments: an options object ({type(opts).__name__}) and a timeout; "
                "set opts.timeout instead"
            )
        return opts
    built = cls()
    for name, value in fields.items():
        if value is not None and not isinstance(value, (cls, timedelta)):
            setattr(built, name, value)
    if given is not None:
        built.timeout = given
    return built


def _rooted_signature(op_type: str, tensor: torch.Tensor, root: int) -> Signature:
    """The signature of a ``gather`` (``tensor``: this rank's input) or ``scatter``
    (``tensor``: this rank's output) rooted at ``root``, as its algorithm computes it."""
    if op_type == "gather":
        return exchange.gather_signature(tensor, root)
    return exchange.scatter_signature(tensor, root)


def _split_rows(tensor: torch.Tensor, split_sizes: list[int], parts: int) -> list[torch.Tensor]:
    """Split along dim 0 by ``split_sizes`` (equal parts when empty)."""
    if split_sizes:
        return list(tensor.split(list(split_sizes)))
    return list(tensor.chunk(parts)) if tensor.shape[0] else [tensor] * parts


def _reduce_scatter_flat(
    ctx: OpContext,
    output: torch.Tensor,
    input: torch.Tensor,
    op: RedOpType,
    factor: Factor,
    size: int,
) -> None:
    staged = _Staged(output)
    source = flat_contiguous(input)
    if factor is not None:
        source = source * factor
    sends = list(torch.tensor_split(source, size))
    out = staged.buffer.view(-1)
    exchange.reduce_scatter(ctx, sends, out, op)
    if op is ReduceOp.AVG:
        finish_average(out, size)
    staged.finish()
