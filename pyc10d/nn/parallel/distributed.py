"""``DistributedDataParallel``: torch's DDP module on pyc10d process groups (CPU).

Construction checks that every rank has the same parameters, broadcasts rank 0's parameters
and buffers, and builds a :class:`~pyc10d.nn.parallel.reducer.Reducer`, which averages gradients
across ranks during backward. Each forward first broadcasts rank 0's buffers
(``broadcast_buffers``), and afterwards tells the Reducer what to expect in the coming backward.

Also as in torch: mixed precision (``mixed_precision=_MixedPrecision(...)``, see
:mod:`.mixed_precision`), optimizers applied in backward (:mod:`.optimizer_in_backward`), buffer
communication hooks (:mod:`.buffer_hooks`) and ``_update_process_group``.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function

from ...api.state import GroupMember, default_group
from . import buffer_hooks, ddp_join
from .autograd_graph import find_tensors, pass_through_sink
from .bucket_assignment import BucketCapacity, compute_bucket_assignment_by_size
from .buffer_hooks import _BufferCommHook, _BufferCommHookLocation
from .comm_hook_plumbing import check_comm_hook
from .join import Join, Joinable, JoinHook
from .logging_data import ddp_logging_data
from .mixed_precision import MixedPrecisionState, _MixedPrecision, cast_forward_inputs
from .module_sync import (
    broadcast_coalesced,
    sync_module_states,
    verify_param_shape_across_processes,
)
from .optimizer_in_backward import setup_in_backward_optimizers
from .reducer import Reducer

__all__ = [
    "DistributedDataParallel",
    "_BufferCommHook",
    "_BufferCommHookLocation",
    "_MixedPrecision",
]

logger = logging.getLogger(__name__)

BROADCAST_BUCKET_SIZE = 250 * 1024 * 1024  # torch's broadcast_bucket_size


class DistributedDataParallel(nn.Module, Joinable):
    """Data parallelism at module level: gradients are averaged across the process group.

    Mirrors ``torch.nn.parallel.DistributedDataParallel`` for CPU modules: the same arguments
    (``device_ids`` and ``output_device`` must stay None on CPU, as in torch), ``no_sync()``,
    ``register_comm_hook``, ``join()``, unused-parameter detection, static graphs,
    ``gradient_as_bucket_view``, ``mixed_precision`` (torch's experimental ``_MixedPrecision``),
    optimizers applied in backward, ``_register_buffer_comm_hook`` and
    ``_update_process_group``. The wrapped module is ``self.module``, so ``state_dict()`` keys
    start with ``"module."``.
    """

    _active_ddp_module: DistributedDataParallel | None = None

    def __init__(
        self,
        module: nn.Module,
        device_ids: list[int | torch.device] | None = None,
        output_device: int | torch.device | None = None,
        dim: int = 0,
        broadcast_buffers: bool = True,
        init_sync: bool = True,
        process_group: Any = None,
        bucket_cap_mb: float | None = None,
        find_unused_parameters: bool = False,
        check_reduction: bool = False,
        gradient_as_bucket_view: bool = False,
        static_graph: bool = False,
        delay_all_reduce_named_params: Any = None,
        param_to_hook_all_reduce: Any = None,
        mixed_precision: Any = None,
        device_mesh: Any = None,
        skip_all_reduce_unused_params: bool = False,
    ) -> None:
        super().__init__()
        Joinable.__init__(self)
        _reject_unsupported(
            delay_all_reduce_named_params=delay_all_reduce_named_params,
            param_to_hook_all_reduce=param_to_hook_all_reduce,
            device_mesh=device_mesh,
            skip_all_reduce_unused_params=skip_all_reduce_unused_params or None,
        )
        self.process_group = default_group() if process_group is None else process_group
        self.parameters_to_ignore = set(getattr(module, "_ddp_params_and_buffers_to_ignore", ()))
        self._module_parameters = [
            p for n, p in module.named_parameters() if n not in self.parameters_to_ignore
        ]
        if not any(p.requires_grad for p in self._module_parameters):
            raise RuntimeError(
                "DistributedDataParallel is not needed when a module doesn't have any parameter "
                "that requires a gradient."
            )
        if device_ids is not None and len(device_ids) > 1:
            raise ValueError("device_ids can only be None or contain a single element.")
        self._check_devices(device_ids, output_device)
        self.device_ids = None
        self.output_device = None
        self.is_multi_device_module = False
        self.device_type = "cpu"
        self.static_graph = False
        self.dim = dim
        self.module = module
        self.device = self._module_parameters[0].device
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.require_backward_grad_sync = True
        self.require_forward_param_sync = True
        self.gradient_as_bucket_view = gradient_as_bucket_view
        if check_reduction:
            warnings.warn(
                "The `check_reduction` argument in `DistributedDataParallel` module is "
                "deprecated. Please avoid using it.",
                FutureWarning,
                stacklevel=2,
            )
        for param in self._module_parameters:
            if isinstance(param, nn.parameter.UninitializedParameter):
                raise RuntimeError(
                    "Modules with uninitialized parameters can't be used with "
                    "`DistributedDataParallel`. Run a dummy forward pass to correctly "
                    "initialize the modules"
                )
        self.broadcast_bucket_size = BROADCAST_BUCKET_SIZE
        self._bucket_capacity = BucketCapacity.create(bucket_cap_mb)
        self.bucket_bytes_cap = self._bucket_capacity.bucket_bytes_cap
        self.bucket_bytes_cap_default = bucket_cap_mb is None
        parameters, expect_sparse_gradient = self._build_params_for_reducer()
        names = self._build_param_to_name_mapping(parameters)
        if init_sync:
            verify_param_shape_across_processes(
                self.process_group, parameters, [names[i] for i in range(len(parameters))]
            )
            sync_module_states(
                self.module,
                self.process_group,
                self.broadcast_bucket_size,
                0,
                self.parameters_to_ignore,
                broadcast_buffers,
            )
        self._ddp_init_helper(parameters, expect_sparse_gradient, names, static_graph)
        self._comm_hooks: list[tuple[Callable, object]] = []
        self._comm_hook_name: str | None = None
        self._has_rebuilt_buckets = False
        self._static_graph_delay_allreduce_enqueued = False
        self._ddp_sink_clone = True
        self._divide_by_initial_world_size = True
        self._uneven_input_join = False
        self.mixed_precision = mixed_precision
        self._mp_state: MixedPrecisionState | None = None
        if mixed_precision is not None:
            logger.info("Received mixed precision config %s", mixed_precision)
            self._mp_state = MixedPrecisionState.setup(self, mixed_precision)
        if static_graph:
            self._set_static_graph()
        self._lazy_init_ran = False

    # -- construction helpers -------------------------------------------------------------------
    def _check_devices(self, device_ids: Any, output_device: Any) -> None:
        devices = {p.device for p in self._module_parameters}
        kinds = {d.type for d in devices}
        if len(kinds) != 1:
            raise ValueError(
                "DistributedDataParallel's input module must be on the same type of devices, "
                f"but input module parameters locate in {kinds}."
            )
        if kinds != {"cpu"}:
            raise ValueError(f"pyc10d's DistributedDataParallel runs CPU modules only, got {kinds}")
        if device_ids or output_device:
            raise ValueError(
                "DistributedDataParallel device_ids and output_device arguments only work with "
                "single-device/multiple-device GPU modules or CPU modules, but got device_ids "
                f"{device_ids}, output_device {output_device}, and module parameters {devices}."
            )

    def _build_params_for_reducer(self) -> tuple[list[nn.Parameter], list[bool]]:
        """Parameters that need gradients, de-duplicated, in module order, and which are sparse."""
        seen: set[int] = set()
        pairs = []
        for module_name, submodule in self.module.named_modules():
            for param_name, param in submodule.named_parameters(recurse=False):
                fqn = f"{module_name}.{param_name}" if module_name else param_name
                if not param.requires_grad or fqn in self.parameters_to_ignore:
                    continue
                if id(param) not in seen:
                    seen.add(id(param))
                    pairs.append((submodule, param))
        sparse = [
            isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and bool(m.sparse) for m, _ in pairs
        ]
        self._assign_modules_buffers()
        return [p for _, p in pairs], sparse

    def _build_param_to_name_mapping(self, parameters: list[nn.Parameter]) -> dict[int, str]:
        index_of = {id(p): i for i, p in enumerate(parameters)}
        names: dict[int, str] = {}
        for name, param in self.module.named_parameters(remove_duplicate=False):
            if id(param) in index_of and index_of[id(param)] not in names:
                names[index_of[id(param)]] = name
        return names

    def _assign_modules_buffers(self) -> None:
        """The buffers to broadcast (re-read each time: modules may reassign them)."""
        named = [
            (name, buf)
            for name, buf in self.module.named_buffers()
            if name not in self.parameters_to_ignore
        ]
        self.modules_buffers = [buf for _, buf in named]
        self.named_module_buffers = dict(named)

    def _ddp_init_helper(
        self,
        parameters: list[nn.Parameter],
        expect_sparse_gradient: list[bool],
        param_names: dict[int, str],
        static_graph: bool,
    ) -> None:
        limits = self._bucket_capacity.initial_size_limits(
            static_graph, self.find_unused_parameters
        )
        bucket_indices, per_bucket_limits = compute_bucket_assignment_by_size(
            parameters, limits, expect_sparse_gradient
        )
        # reversed: gradients of the last-defined parameters are usually ready first
        self.reducer = Reducer(
            parameters,
            list(reversed(bucket_indices)),
            list(reversed(per_bucket_limits)),
            self.process_group,
            expect_sparse_gradient,
            self.bucket_bytes_cap,
            self.find_unused_parameters,
            self.gradient_as_bucket_view,
            param_names,
            self._bucket_capacity.first_bucket_bytes_cap,
        )
        self._reducer_params = parameters

    # -- forward --------------------------------------------------------------------------------
    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        """Run the module, syncing buffers before and preparing the gradient reduction after.

        Recorded by the profiler as ``DistributedDataParallel.forward``, as torch's is.
        """
        with record_function("DistributedDataParallel.forward"):
            inputs, kwargs = self._pre_forward(*inputs, **kwargs)
            previous = DistributedDataParallel._active_ddp_module
            DistributedDataParallel._active_ddp_module = self
            try:
                output = self.module(*inputs, **kwargs)
            finally:
                DistributedDataParallel._active_ddp_module = previous
            return self._post_forward(output)

    def _lazy_init(self) -> None:
        """Before the first forward: take over in-backward optimizers (torch's _lazy_init)."""
        self._setup_in_backward_optimizers()
        self._lazy_init_ran = True

    def _setup_in_backward_optimizers(self) -> None:
        """Run optimizers applied with ``_apply_optimizer_in_backward`` after each bucket's
        average (see :mod:`.optimizer_in_backward`)."""
        setup_in_backward_optimizers(self)

    def _pre_forward(self, *inputs: Any, **kwargs: Any) -> tuple[tuple, dict]:
        if not self._lazy_init_ran:
            self._lazy_init()
        if torch.is_grad_enabled() and self.require_backward_grad_sync:
            self.reducer.prepare_for_forward()
        work = Join.notify_join_context(self)
        if work is not None:
            self.reducer._set_forward_pass_work_handle(work, self._divide_by_initial_world_size)
        if torch.is_grad_enabled() and self.reducer._rebuild_buckets():
            self._has_rebuilt_buckets = True
        if self._check_sync_bufs_pre_fwd():
            self._sync_buffers()
        if self._join_config.enable:
            ddp_join.check_global_requires_backward_grad_sync(self, is_joined_rank=False)
        if self._mp_state is not None:
            self._mp_state.pre_forward()
            inputs, kwargs = cast_forward_inputs(self._mp_state.param_dtype, inputs, kwargs)
        return inputs, kwargs

    def _post_forward(self, output: Any) -> Any:
        if self._check_sync_bufs_post_fwd():
            self._sync_buffers()
        if self._mp_state is not None and not torch.is_grad_enabled():
            self._mp_state.restore()  # no backward will: full precision outside forward
        if torch.is_grad_enabled() and self.require_backward_grad_sync:
            self.require_forward_param_sync = True
            if self.find_unused_parameters and not self.static_graph:
                self.reducer.prepare_for_backward(list(find_tensors(output)))
            else:
                self.reducer.prepare_for_backward([])
        else:
            self.require_forward_param_sync = False
        if (self.find_unused_parameters and not self.static_graph) or (
            self.static_graph and not self._static_graph_delay_allreduce_enqueued
        ):
            output = pass_through_sink(self, output)
        return output

    # -- buffers ----------------------------------------------------------------------------------
    def will_sync_module_buffers(self) -> bool:
        """Whether the next forward broadcasts the buffers (torch's same-named method)."""
        return (
            self.require_forward_param_sync
            and self.broadcast_buffers
            and len(self.modules_buffers) > 0
        )

    def _check_sync_bufs_pre_fwd(self) -> bool:
        """Sync buffers before the forward: no buffer hook, or one registered PRE_FORWARD."""
        return self.will_sync_module_buffers() and buffer_hooks.hook_location(self) in (
            None,
            "PRE_FORWARD",
        )

    def _check_sync_bufs_post_fwd(self) -> bool:
        """Sync buffers after the forward: a buffer hook registered POST_FORWARD."""
        return (
            self.will_sync_module_buffers() and buffer_hooks.hook_location(self) == "POST_FORWARD"
        )

    def _sync_buffers(self) -> None:
        with torch.no_grad():
            if self._join_config.enable:
                authoritative_rank = ddp_join.find_common_rank(self, self._distributed_rank, True)
            else:
                authoritative_rank = 0
            self._assign_modules_buffers()
            with torch.autograd._unsafe_preserve_version_counter(tuple(self.modules_buffers)):
                self._sync_module_buffers(authoritative_rank)

    def _sync_module_buffers(self, authoritative_rank: int) -> None:
        if getattr(self, "buffer_hook", None) is not None:
            buffer_hooks.run_buffer_hook(self)
            return
        self._default_broadcast_coalesced(authoritative_rank=authoritative_rank)

    def _default_broadcast_coalesced(
        self,
        bufs: list[torch.Tensor] | None = None,
        bucket_size: int | None = None,
        authoritative_rank: int = 0,
    ) -> None:
        """Broadcast ``bufs`` (default: the module's buffers) from ``authoritative_rank`` in
        buckets of ``bucket_size`` bytes (default ``broadcast_bucket_size``); what buffer hooks
        can call to get DDP's default sync (torch's same-named method)."""
        if bufs is None:
            bufs = self.modules_buffers
        if bucket_size is None:
            bucket_size = self.broadcast_bucket_size
        self._distributed_broadcast_coalesced(bufs, bucket_size, authoritative_rank)

    def _distributed_broadcast_coalesced(
        self, tensors: list[torch.Tensor], buffer_size: int, authoritative_rank: int = 0
    ) -> None:
        """Broadcast ``tensors`` over DDP's group, coalesced into ``buffer_size``-byte buckets."""
        broadcast_coalesced(self.process_group, tensors, buffer_size, authoritative_rank)

    def _register_buffer_comm_hook(
        self,
        state: Any,
        hook: Callable,
        comm_hook_location: Any = _BufferCommHookLocation.POST_FORWARD,
    ) -> None:
        """Sync buffers with ``hook(state, named_buffers)`` instead of broadcasting rank 0's.

        ``named_buffers`` maps buffer names to the buffers. ``comm_hook_location`` is
        ``_BufferCommHookLocation.PRE_FORWARD`` or ``POST_FORWARD`` (default; torch's members
        work too). The hook may return a list of futures, which DDP awaits at the end of the
        next backward. As in torch, it replaces the broadcast only where one would happen
        (``broadcast_buffers=True``), and a non-callable hook raises AssertionError.
        """
        self.buffer_hook = buffer_hooks.make_buffer_hook(state, hook, comm_hook_location)

    @property
    def _distributed_rank(self) -> int:
        return self.process_group.rank()

    # -- gradient sync control ------------------------------------------------------------------
    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Accumulate gradients locally inside; the first backward after it syncs them."""
        old = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = old

    def _set_static_graph(self) -> None:
        """Declare the graph static (torch's private API; prefer ``static_graph=True``)."""
        if self.static_graph:
            warnings.warn(
                "You've set static_graph to be True, no need to set it again.", stacklevel=2
            )
            return
        self.static_graph = True
        self._static_graph_delay_allreduce_enqueued = False
        self.reducer._set_static_graph()
        if self.find_unused_parameters:
            warnings.warn(
                "You passed find_unused_parameters=true to DistributedDataParallel, "
                "`_set_static_graph` will detect unused parameters automatically, so you do not "
                "need to set find_unused_parameters=true, just be sure these unused parameters "
                "will not change during training loop while calling `_set_static_graph`.",
                stacklevel=2,
            )

    def _update_process_group(self, new_process_group: Any) -> None:
        """Reduce over ``new_process_group`` from now on (torch's private API to shrink or grow
        the world without a new DDP).

        Forgets an unfinished iteration (say, one whose backward raised) and rebuilds the
        buckets again after the next iteration. On ranks outside the new group (which got
        ``GroupMember.NON_GROUP_MEMBER`` from ``new_group``) only that reset happens; None means
        the default group. Hooks registered with ``register_comm_hook`` keep the group they
        were given.
        """
        self._has_rebuilt_buckets = False
        self.reducer._reset_state()
        if new_process_group is GroupMember.NON_GROUP_MEMBER:
            return
        if new_process_group is None:
            new_process_group = default_group()
        self.process_group = new_process_group
        self.reducer._update_process_group(new_process_group)

    def _set_ddp_sink_clone(self, val: bool) -> None:
        """Whether outputs are cloned on their way through the DDP sink (default True)."""
        self._ddp_sink_clone = val

    def _check_reducer_finalized(self) -> None:
        """RuntimeError if the last backward did not reduce every bucket."""
        self.reducer._check_reducer_finalized()

    def _remove_autograd_hooks(self) -> None:
        """Remove the Reducer's hooks from the parameters."""
        self.reducer._remove_autograd_hooks()

    # -- communication hooks ----------------------------------------------------------------------
    def register_comm_hook(self, state: object, hook: Callable) -> None:
        """Reduce each bucket with ``hook(state, bucket) -> Future`` instead of allreduce.

        As in torch: the hook gets undivided gradients (divide by the world size yourself), its
        future must hold the bucket's new flat tensor, and it can be registered once only
        (RuntimeError: "register_comm_hook or register_builtin_comm_hook can only be called
        once."), before training.
        """
        try:
            check_comm_hook(hook)
        except (TypeError, ValueError) as exc:
            self._log_error(type(exc), str(exc))
            raise
        self.reducer.register_comm_hook(state, hook)
        self._comm_hook_name = getattr(hook, "__qualname__", repr(hook))
        self._comm_hooks.append((hook, state))

    def _register_builtin_comm_hook(self, comm_hook_type: Any) -> None:
        """Register torch's built-in ``ALLREDUCE`` or ``FP16_COMPRESS`` hook (run in Python).

        ``comm_hook_type`` is ``torch.distributed.BuiltinCommHookType`` or anything named like
        its members; the same "can only be called once" rule applies.
        """
        from ...algorithms.ddp_comm_hooks import default_hooks

        hooks = {
            "ALLREDUCE": default_hooks.allreduce_hook,
            "FP16_COMPRESS": default_hooks.fp16_compress_hook,
        }
        name = getattr(comm_hook_type, "name", str(comm_hook_type).rsplit(".", 1)[-1])
        if name not in hooks:
            raise ValueError(f"Unknown built-in DDP communication hook {comm_hook_type!r}")
        state = None if self.process_group is default_group() else self.process_group
        self.reducer.register_comm_hook(state, hooks[name])
        self._comm_hook_name = str(comm_hook_type)

    # -- pickling ---------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        """Everything but the process group and the Reducer (default group only, as in torch);
        the hooks of mixed precision and in-backward optimizers are set up again on load."""
        self._check_default_group()
        attrs = dict(self.__dict__)
        for name in ("process_group", "reducer", "_reducer_params", "_mp_state"):
            attrs.pop(name, None)
        attrs["_comm_hooks"] = [
            (hook, state)
            for hook, state in attrs.get("_comm_hooks", [])
            if not isinstance(state, (MixedPrecisionState, weakref.ref))
        ]
        return attrs

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Rejoin the default group and build a fresh Reducer (hooks must be registered again)."""
        super().__setstate__(state)
        self.process_group = default_group()
        self.__dict__.setdefault("require_forward_param_sync", True)
        self.__dict__.setdefault("require_backward_grad_sync", True)
        parameters, expect_sparse_gradient = self._build_params_for_reducer()
        names = self._build_param_to_name_mapping(parameters)
        self._ddp_init_helper(parameters, expect_sparse_gradient, names, self.static_graph)
        self._comm_hook_name = None
        self._has_rebuilt_buckets = False
        self._lazy_init_ran = False
        self._mp_state = None
        if self.__dict__.get("mixed_precision") is not None:
            self._mp_state = MixedPrecisionState.setup(self, self.mixed_precision)
        if self.static_graph:
            self.reducer._set_static_graph()
            self._static_graph_delay_allreduce_enqueued = False

    def _check_default_group(self) -> None:
        try:
            default = default_group()
        except ValueError:
            default = None
        if self.process_group is not default:
            self._log_and_throw(
                RuntimeError,
                "DDP Pickling/Unpickling are only supported when using DDP with the default "
                "process group. That is, when you have called init_process_group and have not "
                "passed process_group argument to DDP constructor",
            )

    # -- join -------------------------------------------------------------------------------------
    def join(
        self,
        divide_by_initial_world_size: bool = True,
        enable: bool = True,
        throw_on_early_termination: bool = False,
    ) -> Join:
        """Context manager for uneven inputs: ranks out of data shadow the others' collectives.

        With ``throw_on_early_termination`` every rank raises once one runs out instead.
        """
        return Join(
            [self],
            enable,
            throw_on_early_termination,
            divide_by_initial_world_size=divide_by_initial_world_size,
        )

    def join_hook(self, **kwargs: Any) -> JoinHook:
        """The hook a :class:`Join` runs while this rank has joined (torch's ``_DDPJoinHook``)."""
        return ddp_join.DDPJoinHook(self, kwargs.get("divide_by_initial_world_size", True))

    @property
    def join_device(self) -> torch.device:
        """Device of the join collectives (the module's)."""
        return self.device

    @property
    def join_process_group(self) -> Any:
        """Process group of the join collectives (DDP's)."""
        return self.process_group

    # -- misc -------------------------------------------------------------------------------------
    @staticmethod
    def _set_params_and_buffers_to_ignore_for_model(
        module: nn.Module, params_and_buffers_to_ignore: Any
    ) -> None:
        """Have DDP leave these fully qualified parameter / buffer names alone (not synced)."""
        module._ddp_params_and_buffers_to_ignore = params_and_buffers_to_ignore
        for name, param in module.named_parameters():
            if name in params_and_buffers_to_ignore:
                param._ddp_ignored = True
        for name, buffer in module.named_buffers():
            if name in params_and_buffers_to_ignore:
                buffer._ddp_ignored = True

    @staticmethod
    def _get_data_parallel_params(module: nn.Module, named_params: bool = False) -> Iterator[Any]:
        """The parameters DDP manages (those not marked ``_ddp_ignored``)."""
        items = module.named_parameters() if named_params else module.parameters()
        for item in items:
            param = item[1] if named_params else item
            if not hasattr(param, "_ddp_ignored"):
                yield item

    def _log_error(self, err_type: type[BaseException], err_msg: str) -> None:
        """Record an error for the logging data as torch words it: ``"<class 'X'>: message"``."""
        reducer = self.__dict__.get("reducer")
        if reducer is not None:  # as in torch, nothing is logged before the Reducer exists
            reducer._log_error(f"{err_type}: {err_msg}")

    def _log_and_throw(self, err_type: type[BaseException], err_msg: str) -> None:
        """Record the error in the logging data, then raise it (torch's same-named method)."""
        self._log_error(err_type, err_msg)
        raise err_type(err_msg)

    def _get_ddp_logging_data(self) -> dict[str, Any]:
        """A dict of construction settings and runtime stats (a subset of torch's keys), with
        ``has_error`` and ``error`` once DDP or its Reducer raised an error."""
        return ddp_logging_data(self)

    def train(self, mode: bool = True) -> DistributedDataParallel:
        """Set training mode on the wrapped module; returns self."""
        super().train(mode)
        return self


def _reject_unsupported(**options: Any) -> None:
    for name, value in options.items():
        if value is not None:
            raise NotImplementedError(
                f"pyc10d's DistributedDataParallel does not support {name}= (got {value!r})"
            )
