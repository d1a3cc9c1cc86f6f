"""``Reducer``: averages gradients across ranks during backward (torch's C++ ``c10d::Reducer``).

A hook on each parameter's gradient accumulator marks the parameter ready. Its gradient is
copied (divided by the world size) into its bucket's flat buffer, and once a bucket is complete
its allreduce, or the registered communication hook, starts asynchronously while backward goes
on. Buckets launch strictly in index order, so every rank issues the same collectives in the same
order. When the last bucket has launched, a callback queued on the autograd engine waits for
every bucket at the end of backward and writes the results into ``.grad`` (or leaves ``.grad``
as views of the buffers with ``gradient_as_bucket_view``).

Also as in torch: unused-parameter detection (``find_unused_parameters``: parameters unreachable
from the outputs are marked ready at once, and a bitmap allreduce tells locally from globally
unused ones), static graphs (the first backward only counts hooks, then reduces everything at
once), and rebuilding the buckets once, after the first iteration, in the order gradients became
ready (rank 0's order, broadcast).
"""

from __future__ import annotations

import functools
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.autograd import Variable
from torch.autograd.profiler import record_function

from ...api.debug import DebugLevel, get_debug_level
from ...process_group import ProcessGroup
from . import reducer_messages as msg
from .bucket_assignment import compute_bucket_assignment_by_size
from .comm_hook_plumbing import CommHook, allreduce_by_sum, parse_hook_result, run_hook
from .grad_bucket import GradBucket
from .reducer_buckets import Bucket, build_buckets, same_storage
from .reducer_stats import ReducerStats

UNSET_DIV_FACTOR = -1


def _fire(reducer_ref: weakref.ref, index: int, *_: Any) -> None:
    reducer = reducer_ref()
    if reducer is not None:
        reducer._autograd_hook(index)


class Reducer:
    """Bucketed gradient averaging for DDP; see the module docstring (torch's ``dist.Reducer``).

    ``bucket_indices`` lists, per bucket, indices into ``params`` (bucket 0 is reduced first);
    ``param_names`` maps parameter index to its name, for error messages.
    """

    _warned_no_unused = False

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        bucket_indices: Sequence[Sequence[int]],
        per_bucket_size_limits: Sequence[int],
        process_group: ProcessGroup,
        expect_sparse_gradient: Sequence[bool] | None = None,
        bucket_bytes_cap: int = 25 * 1024 * 1024,
        find_unused_parameters: bool = False,
        gradient_as_bucket_view: bool = False,
        param_names: dict[int, str] | None = None,
        first_bucket_bytes_cap: int = 1024 * 1024,
    ) -> None:
        if not params:
            raise RuntimeError("Expected at least one parameter.")
        n = len(params)
        self._params = list(params)
        self.process_group = process_group
        self._expect_sparse = list(expect_sparse_gradient or [False] * n)
        self._bucket_bytes_cap = bucket_bytes_cap
        self._first_bucket_bytes_cap = first_bucket_bytes_cap
        self._find_unused = find_unused_parameters
        self._gradient_as_bucket_view = gradient_as_bucket_view
        self._param_names = dict(param_names or {})
        self._static_graph = False
        self._comm_hook: CommHook | None = None
        self._comm_hook_state: Any = None
        # per-iteration accounting
        self._expect_autograd_hooks = False
        self._require_finalize = False
        self._has_marked_unused_parameters = False
        self._next_bucket = 0
        self._div_factor = UNSET_DIV_FACTOR
        self._unused_parameters: list[int] = []
        self._ready_this_iteration: set[int] = set()
        self._grad_ready_order: list[int] = []
        self._num_iterations = 0
        # unused-parameter bitmaps: local, and the copy that is allreduced
        self._local_used_map = torch.zeros(n, dtype=torch.int32)
        self._local_used_map_dev = torch.zeros(n, dtype=torch.int32)
        self._local_used_work: Any = None
        self._local_used_reduced = False
        # static graph: how often each hook fired in the first iteration, and in this one
        self._hooks_in_first_iteration = [0] * n
        self._hooks_left = [0] * n
        # bucket rebuilding
        self._has_rebuilt_buckets = False
        self._rebuilt_param_indices: list[int] = []
        # join: the allreduce telling how many ranks still have inputs
        self._forward_work: tuple[Any, bool] | None = None
        self.stats = ReducerStats()
        # mixed precision: the dtype of the buckets (the parameters' low-precision dtype)
        self._mp_param_dtype: torch.dtype | None = None
        # optimizers in backward: their parameters' .grad is left alone at the end
        self._optim_in_backward = False
        # run at the start of _finalize_backward (mixed precision restores full precision)
        self._finalize_hooks: list[Callable[[], None]] = []
        # futures a buffer communication hook asked to be awaited at the end of backward
        self._installed_futures: list[torch.futures.Future] = []
        self._buckets: list[Bucket] = []
        self._locators: list[tuple[int, int]] = []
        self._initialize_buckets(bucket_indices, per_bucket_size_limits)
        self._grad_accumulators: list[Any] = []
        self._hook_handles: list[Any] = []
        self._register_autograd_hooks()

    # -- setup --------------------------------------------------------------------------------
    def _initialize_buckets(
        self, bucket_indices: Sequence[Sequence[int]], size_limits: Sequence[int]
    ) -> None:
        self._buckets, self._locators = build_buckets(
            self._params, bucket_indices, size_limits, self._expect_sparse, self._mp_param_dtype
        )
        self.stats.bucket_sizes = [b.nbytes() for b in self._buckets]
        self.stats.bucket_indices = [list(b.variable_indices) for b in self._buckets]
        if not self._gradient_as_bucket_view or self._mp_param_dtype is not None:
            return
        with torch.no_grad():  # existing gradients move into the new buffers
            for bucket in self._buckets:
                if bucket.expect_sparse_gradient:
                    continue  # no buffer: its sparse gradient is reduced as it is (as in torch)
                for param, view in zip(bucket.params, bucket.views_in, strict=True):
                    grad = param.grad
                    if grad is not None and not grad.is_sparse and not same_storage(grad, view):
                        view.copy_(grad)
                        param.grad = view

    def _register_autograd_hooks(self) -> None:
        ref = weakref.ref(self)
        with torch.enable_grad():
            for index, param in enumerate(self._params):
                accumulator = param.view_as(param).grad_fn.next_functions[0][0]
                self._grad_accumulators.append(accumulator)
                handle = accumulator.register_hook(functools.partial(_fire, ref, index))
                self._hook_handles.append(handle)

    def _remove_autograd_hooks(self) -> None:
        """Remove the hooks from the parameters' gradient accumulators."""
        for handle in self._hook_handles:
            handle.remove()
        self._hook_handles.clear()

    def _refresh_autograd_hooks(self) -> None:
        """Hook the parameters' current gradient accumulators instead of the previous ones.

        Changing a parameter's dtype through ``.data`` gives it a new accumulator, so mixed
        precision calls this before each forward (torch hooks the low-precision accumulators
        in a pre-forward hook of each module, ``_module_wait_for_copy_hook``).
        """
        self._remove_autograd_hooks()
        self._grad_accumulators = []
        self._register_autograd_hooks()

    def _set_mixed_precision_param_dtype(self, dtype: torch.dtype | None) -> None:
        """Gradients arrive in ``dtype``: rebuild the buckets' buffers in it (as rebuilding
        the buckets later will). ``None`` keeps the parameters' dtypes."""
        if dtype is None:
            return
        self._mp_param_dtype = dtype
        self._initialize_buckets(self.bucket_indices(), [b.size_limit for b in self._buckets])

    def _set_optimizer_in_backward(self) -> None:
        """Leave ``.grad`` of parameters with in-backward optimizers to their hook."""
        self._optim_in_backward = True

    def _install_post_backward_futures(self, futures: Sequence[torch.futures.Future]) -> None:
        """Await ``futures`` at the end of the coming backward (a buffer hook's futures)."""
        futures = [futures] if isinstance(futures, torch._C.Future) else futures
        if not isinstance(futures, (list, tuple)) or not all(
            isinstance(f, torch._C.Future) for f in futures
        ):
            raise TypeError(
                "_install_post_backward_futures(): expected a list of torch.futures.Future, "
                f"got {type(futures).__name__}"
            )
        self._installed_futures.extend(futures)

    def _reset_state(self) -> None:
        """Forget an unfinished iteration (say, one whose backward raised) and rebuild the
        buckets again (torch's ``Reducer::reset_state``, used by ``_update_process_group``)."""
        self._has_rebuilt_buckets = False
        self._rebuilt_param_indices = []
        self._expect_autograd_hooks = False
        self._require_finalize = False
        self._div_factor = UNSET_DIV_FACTOR
        if self._find_unused:
            self._local_used_map.zero_()
            self._local_used_reduced = False
        # The aborted iteration's allreduces may still be running on the buckets and the
        # bitmap: the next iteration gets fresh ones (torch reuses them, so the late sum can
        # land on the next iteration's gradients, which then come out doubled).
        self._initialize_buckets(self.bucket_indices(), [b.size_limit for b in self._buckets])
        self._local_used_map_dev = torch.zeros_like(self._local_used_map_dev)
        self._local_used_work = None

    def _update_process_group(self, new_process_group: ProcessGroup) -> None:
        """Reduce over ``new_process_group`` from now on."""
        self.process_group = new_process_group

    def _set_static_graph(self) -> None:
        """Treat the graph as static (must be set before the first iteration)."""
        if self._num_iterations != 0:
            raise self._error(
                "set_static_graph() should be called before training loop starts and after "
                "DistributedDataParallel is constructed."
            )
        self._static_graph = True

    def register_comm_hook(self, state: Any, hook: CommHook) -> None:
        """Reduce buckets with ``hook(state, bucket)`` instead of allreduce; only once."""
        if self._comm_hook is not None:
            raise self._error(msg.HOOK_ONCE)
        self._comm_hook, self._comm_hook_state = hook, state

    # -- modes ----------------------------------------------------------------------------------
    def _dynamic_graph_find_unused(self) -> bool:
        return not self._static_graph and self._find_unused

    def _static_graph_first_iteration(self) -> bool:
        return self._static_graph and self._num_iterations == 1

    def _static_graph_after_first_iteration(self) -> bool:
        return self._static_graph and self._num_iterations > 1

    def _should_rebuild_buckets(self) -> bool:
        return (self._static_graph or not self._find_unused) and not self._has_rebuilt_buckets

    # -- before forward and backward ------------------------------------------------------------
    def prepare_for_forward(self) -> None:
        """Count an iteration (called by DDP before a forward that will sync gradients)."""
        self._num_iterations += 1
        self.stats.iterations = self._num_iterations
        self.stats.forward_start = time.perf_counter()

    def prepare_for_backward(self, outputs: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Expect hooks in the coming backward; find unused parameters from ``outputs`` (a
        tensor or a sequence of them, as torch's two overloads take)."""
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        self.stats.backward_start = time.perf_counter()
        self._expect_autograd_hooks = True
        self._grad_ready_order = []
        self._next_bucket = 0
        for bucket in self._buckets:
            bucket.pending = len(bucket.params)
            bucket.future = None
        if self._static_graph:
            self._hooks_left = list(self._hooks_in_first_iteration)
        self._has_marked_unused_parameters = False
        self._ready_this_iteration = set()
        if self._dynamic_graph_find_unused():
            self._unused_parameters = self._search_unused_parameters(outputs)

    def _search_unused_parameters(self, outputs: Sequence[torch.Tensor]) -> list[int]:
        from .autograd_graph import reachable_nodes

        with record_function("torch.distributed.ddp.reducer::search_unused_parameters"):
            seen = reachable_nodes(outputs)
        unused = [i for i, acc in enumerate(self._grad_accumulators) if acc not in seen]
        if not unused and not Reducer._warned_no_unused:
            Reducer._warned_no_unused = True
            warnings.warn(
                "find_unused_parameters=True was specified in DDP constructor, but did not find "
                "any unused parameters in the forward pass. This flag results in an extra "
                "traversal of the autograd graph every iteration,  which can adversely affect "
                "performance. If your model indeed never has any unused parameters in the "
                "forward pass, consider turning this flag off. Note that this warning may be a "
                "false positive if your model has flow control causing later iterations to have "
                "unused parameters.",
                stacklevel=4,
            )
        self.stats.unused_parameter_size = sum(
            self._params[i].numel() * self._params[i].element_size() for i in unused
        )
        return unused

    # -- hooks --------------------------------------------------------------------------------
    def _autograd_hook(self, index: int) -> None:
        """A parameter's gradient accumulator ran (torch's ``Reducer::autograd_hook``)."""
        if not self._expect_autograd_hooks:
            return  # no_sync, or a backward DDP did not prepare for
        self._grad_ready_order.append(index)
        tracks_use = self._dynamic_graph_find_unused() or self._static_graph_first_iteration()
        if tracks_use and self._params[index].grad is not None:  # None: output not in the loss
            self._local_used_map[index] = 1
        if self._static_graph_first_iteration():
            self._hooks_in_first_iteration[index] += 1
            return
        if not self._has_marked_unused_parameters:
            self._has_marked_unused_parameters = True
            for unused in self._unused_parameters:
                self._mark_variable_ready(unused)
        if self._static_graph_after_first_iteration():
            if self._hooks_left[index] <= 0:
                raise self._error(msg.GRAPH_CHANGED)
            self._hooks_left[index] -= 1
            if self._hooks_left[index] > 0:
                return
        if self._should_rebuild_buckets():
            self._rebuilt_param_indices.append(index)
        self._mark_variable_ready(index)

    def _mark_variable_ready(self, index: int) -> None:
        if index in self._ready_this_iteration:
            name = self._param_names.get(index) if self._debug_names() else None
            raise self._error(msg.marked_twice(index, name, self._has_marked_unused_parameters))
        self._ready_this_iteration.add(index)
        self._require_finalize = True
        b, _ = self._locators[index]
        bucket = self._buckets[b]
        self._set_divide_factor()
        with torch.no_grad():
            if bucket.expect_sparse_gradient:
                self._mark_sparse_ready(index)
            else:
                self._mark_dense_ready(index)
        bucket.pending -= 1
        if bucket.pending == 0:
            self._mark_bucket_ready(b)
        if self._next_bucket == len(self._buckets):
            if self._dynamic_graph_find_unused():
                self._all_reduce_local_used_map()
            Variable._execution_engine.queue_callback(self._finalize_callback)

    def _mark_dense_ready(self, index: int) -> None:
        b, k = self._locators[index]
        bucket = self._buckets[b]
        view = bucket.views_in[k]
        param = self._params[index]
        grad = param.grad
        if grad is None:
            if (self._dynamic_graph_find_unused() or self._static_graph_first_iteration()) and int(
                self._local_used_map[index]
            ) != 0:
                raise self._error(msg.UNDEFINED_BUT_REDUCED)
            view.zero_()
            return
        if grad.is_sparse:
            raise self._error(
                f"Expected parameter {self._describe(index)} to have a dense gradient, but it is "
                "sparse; DDP expects sparse gradients only from nn.Embedding and "
                "nn.EmbeddingBag with sparse=True"
            )
        if grad.dtype != view.dtype:
            raise self._error(f"Expected {view.dtype}, got {grad.dtype}")
        if same_storage(grad, view):
            if self._comm_hook is None:
                view.div_(self._div_factor)
            return
        if self._comm_hook is None:
            torch.mul(grad, 1.0 / self._div_factor, out=view)
        else:
            view.copy_(grad)
        if self._gradient_as_bucket_view and self._mp_param_dtype is None:
            param.grad = view

    def _mark_sparse_ready(self, index: int) -> None:
        b, _ = self._locators[index]
        grad = self._params[index].grad
        if grad is None:
            raise self._error("Expected sparse gradient to be defined.")
        if not grad.is_sparse:
            raise self._error("Expected variable to have sparse gradient.")
        if self._comm_hook is None:
            grad.div_(self._div_factor)
        self._buckets[b].sparse_grad = grad

    def _set_divide_factor(self) -> None:
        if self._div_factor != UNSET_DIV_FACTOR:
            return
        self._div_factor = self.process_group.size()
        if self._forward_work is not None:
            work, use_static_world_size = self._forward_work
            if not use_static_world_size:
                work.wait()
                self._div_factor = int(work.result()[0].item())

    def _mark_bucket_ready(self, bucket_index: int) -> None:
        if bucket_index > self._next_bucket:
            return  # launched when the buckets before it are
        while (
            self._next_bucket < len(self._buckets) and self._buckets[self._next_bucket].pending == 0
        ):
            if self._next_bucket == 0:
                self.stats.comm_start = time.perf_counter()
            self._all_reduce_bucket(self._buckets[self._next_bucket])
            self._next_bucket += 1

    def _all_reduce_bucket(self, bucket: Bucket) -> None:
        tensor = bucket.sparse_grad if bucket.expect_sparse_gradient else bucket.buffer
        assert tensor is not None
        grad_bucket = GradBucket(
            bucket.index,
            tensor,
            bucket.params,
            bucket.offsets,
            bucket.index == len(self._buckets) - 1,
        )
        bucket.future = self._run_comm_hook(grad_bucket)

    def _run_allreduce_hook(self, grad_bucket: GradBucket) -> torch.futures.Future:
        """Start a SUM allreduce of the bucket's buffer, undivided (what torch's Python hooks
        for mixed precision and in-backward optimizers build on)."""
        return allreduce_by_sum(self.process_group, grad_bucket)

    def _run_comm_hook(self, grad_bucket: GradBucket) -> torch.futures.Future:
        """Reduce one bucket: the registered hook, or allreduce SUM (grads are pre-divided)."""
        if self._comm_hook is None:
            return allreduce_by_sum(self.process_group, grad_bucket)
        return run_hook(self._comm_hook, self._comm_hook_state, grad_bucket)

    def _all_reduce_local_used_map(self) -> None:
        self._local_used_map_dev.copy_(self._local_used_map)
        self._local_used_work = self.process_group.allreduce([self._local_used_map_dev])

    # -- end of backward ------------------------------------------------------------------------
    def _finalize_callback(self) -> None:
        if self._static_graph_after_first_iteration() and self._should_rebuild_buckets():
            self._rebuilt_param_indices.extend(self._unused_parameters)
        self._finalize_backward()

    def _delay_all_reduce(self) -> None:
        """A static graph's first backward: reduce every bucket at once, at the end."""
        self._all_reduce_local_used_map()
        self._unused_parameters = [
            i for i, count in enumerate(self._hooks_in_first_iteration) if count == 0
        ]
        self._require_finalize = True
        with torch.no_grad():
            for index in range(len(self._params)):
                self._set_divide_factor()
                if self._expect_sparse[index]:
                    self._mark_sparse_ready(index)
                else:
                    self._mark_dense_ready(index)
        for bucket in self._buckets:
            self._all_reduce_bucket(bucket)
        self._finalize_backward()

    def _finalize_backward(self) -> None:
        self._expect_autograd_hooks = False
        self._require_finalize = False
        for hook in self._finalize_hooks:
            hook()
        with torch.no_grad():
            for bucket in self._buckets:
                if bucket.future is None:
                    raise self._error(
                        "Expected bucket.future_work not to be null. This may indicate that "
                        "communication hook was not properly installed."
                    )
                result = parse_hook_result(bucket.future.wait())
                bucket.future = None
                if bucket.expect_sparse_gradient:
                    if bucket.sparse_grad is not None and result is not bucket.sparse_grad:
                        bucket.sparse_grad.copy_(result)
                    bucket.sparse_grad = None
                else:
                    bucket.set_views_out(result)
                self._div_factor = UNSET_DIV_FACTOR
                if not bucket.expect_sparse_gradient:
                    self._finalize_bucket_dense(bucket)
        self._wait_installed_futures()
        tracks_use = self._dynamic_graph_find_unused() or self._static_graph_first_iteration()
        if tracks_use and not self._local_used_reduced and self._local_used_work is not None:
            self._local_used_work.wait()
        if self._dynamic_graph_find_unused():
            self._local_used_map.zero_()
            self._local_used_reduced = False
        self._forward_work = None
        self.stats.finish_backward(self._grad_ready_order)

    def _wait_installed_futures(self) -> None:
        futures, self._installed_futures = self._installed_futures, []
        for future in futures:
            future.wait()  # re-raises a failed collective's error

    def _globally_unused(self, index: int) -> bool:
        if not (self._static_graph or self._find_unused):
            return False
        if int(self._local_used_map[index]) != 0:
            return False
        if not self._local_used_reduced:  # wait only when something was locally unused
            self._local_used_work.wait()
            self._local_used_map.copy_(self._local_used_map_dev)
            self._local_used_reduced = True
        return int(self._local_used_map[index]) == 0

    def _finalize_bucket_dense(self, bucket: Bucket) -> None:
        # with mixed precision .grad is full precision: never a view of the low-precision bucket
        as_view = self._gradient_as_bucket_view and self._mp_param_dtype is None
        for k, index in enumerate(bucket.variable_indices):
            param = self._params[index]
            global_unused = self._globally_unused(index)
            view_in, view_out = bucket.views_in[k], bucket.views_out[k]
            if as_view and not same_storage(view_in, view_out):
                view_in.copy_(view_out)
            if global_unused or self._stepped_in_backward(param):
                continue  # its .grad stays untouched, as in torch
            if not as_view:
                if param.grad is None:
                    param.grad = torch.empty_like(param, memory_format=torch.preserve_format)
                param.grad.copy_(view_out)
            elif param.grad is None:
                param.grad = view_in
            elif not same_storage(param.grad, view_in):
                raise self._error(msg.NOT_BUCKET_VIEW)

    def _stepped_in_backward(self, param: torch.Tensor) -> bool:
        return self._optim_in_backward and hasattr(param, "_in_backward_optimizers")

    # -- checks and rebuilding --------------------------------------------------------------------
    def _ensure_prior_reduction_finished(self) -> None:
        if not self._require_finalize:
            return
        unmarked = [i for i in range(len(self._params)) if i not in self._ready_this_iteration]
        names = [self._describe(i) for i in unmarked] if self._debug_names() else None
        raise self._error(
            msg.prior_reduction_not_finished(
                self.process_group.rank(), self._static_graph, self._find_unused, unmarked, names
            )
        )

    def _check_reducer_finalized(self) -> None:
        """RuntimeError if the last backward did not reduce every bucket."""
        self._ensure_prior_reduction_finished()

    def _rebuild_buckets(self) -> bool:
        """Once, after the first iteration: rebuild buckets in gradient-ready order (rank 0's)."""
        self._ensure_prior_reduction_finished()
        if not self._should_rebuild_buckets() or not self._rebuilt_param_indices:
            return False
        order = self._rebuilt_param_indices
        if len(order) != len(self._params):
            raise self._error(
                "rebuilt parameter indices size is not same as original model parameters size."
                f"Original model param size is: {len(self._params)} versus rebuilt params size "
                f"of: {len(order)}"
            )
        indices, limits = compute_bucket_assignment_by_size(
            [self._params[i] for i in order],
            [self._first_bucket_bytes_cap, self._bucket_bytes_cap],
            self._expect_sparse,
            order,
        )
        indices, limits = self._sync_bucket_indices(indices, limits)
        self._has_rebuilt_buckets = True
        self._rebuilt_param_indices = []
        self._initialize_buckets(indices, limits)
        self.stats.record_rebuild(self.stats.bucket_sizes, indices, limits)
        return True

    def _sync_bucket_indices(
        self, indices: list[list[int]], limits: list[int]
    ) -> tuple[list[list[int]], list[int]]:
        """Rank 0's bucket assignment, broadcast (every rank must build the same buckets)."""
        flat = [i for bucket in indices for i in bucket]
        header = torch.tensor([*flat, len(indices)], dtype=torch.int64)
        self.process_group.broadcast([header], root=0).wait()
        count = int(header[-1])
        if self.process_group.rank() == 0:
            sizes = torch.tensor([len(b) for b in indices] + list(limits), dtype=torch.int64)
        else:
            sizes = torch.zeros(2 * count, dtype=torch.int64)
        self.process_group.broadcast([sizes], root=0).wait()
        flat, lengths = header[:-1].tolist(), sizes[:count].tolist()
        out, pos = [], 0
        for length in lengths:
            out.append(flat[pos : pos + length])
            pos += length
        return out, sizes[count:].tolist()

    def _push_all_rebuilt_params(self) -> None:
        """Record every parameter as ready in index order (a joined rank's stand-in)."""
        if self._should_rebuild_buckets() and not self._rebuilt_param_indices:
            self._rebuilt_param_indices = list(range(len(self._params)))

    # -- join support -----------------------------------------------------------------------------
    def _get_zeros_like_grad_buckets(self) -> list[GradBucket]:
        """Each bucket as a GradBucket of zeros (what a joined rank contributes)."""
        out = []
        for bucket in self._buckets:
            if bucket.expect_sparse_gradient:
                param = bucket.params[0]
                zeros = torch.sparse_coo_tensor(
                    torch.zeros((1, 0), dtype=torch.int64),
                    torch.zeros((0, *param.shape[1:]), dtype=param.dtype),
                    param.shape,
                )
            else:
                assert bucket.buffer is not None
                zeros = torch.zeros_like(bucket.buffer)
            last = bucket.index == len(self._buckets) - 1
            out.append(GradBucket(bucket.index, zeros, bucket.params, bucket.offsets, last))
        return out

    def _get_local_used_map(self) -> torch.Tensor:
        """The bitmap of locally used parameters that is allreduced (zeros on a joined rank)."""
        return self._local_used_map_dev

    def _set_forward_pass_work_handle(self, work: Any, use_static_world_size: bool) -> None:
        """Join: the allreduce counting ranks with inputs (the divide factor unless static)."""
        self._forward_work = (work, use_static_world_size)

    # -- helpers ----------------------------------------------------------------------------------
    def _error(self, text: str) -> RuntimeError:
        """Record ``text`` for the logging data and return the RuntimeError to raise (torch's
        ``REDUCER_CHECK``, which logs the failure before throwing)."""
        self._log_error(text)
        return RuntimeError(text)

    def _log_error(self, text: str) -> None:
        """Record an error for ``_get_ddp_logging_data()`` (``has_error``, ``error``; torch's
        ``Logger::set_error_and_log``)."""
        self.stats.error = text

    def _debug_names(self) -> bool:
        return get_debug_level() != DebugLevel.OFF and bool(self._param_names)

    def _describe(self, index: int) -> str:
        return self._param_names.get(index, f"#{index}")

    def bucket_count(self) -> int:
        """How many buckets the gradients are reduced in."""
        return len(self._buckets)

    def bucket_indices(self) -> list[list[int]]:
        """Parameter indices per bucket, in reduction order."""
        return [list(b.variable_indices) for b in self._buckets]
