"""DDP-native mixed precision (``DistributedDataParallel(mixed_precision=_MixedPrecision(...))``).

As in torch: each parameter keeps its full-precision data in ``param._fp_param`` and gets a
low-precision twin ``param._mp_param`` (empty between iterations: torch keeps its shape over a
storage resized to 0, which cannot be pickled and loaded back). Before each forward
the parameters are switched to ``param_dtype`` (floating-point inputs are cast too), so forward
and backward compute in low precision and gradients arrive in ``param_dtype``; the Reducer's
buckets hold ``param_dtype``, each bucket is reduced in ``reduce_dtype`` (default: the
``param_dtype``) and divided by the world size after the sum, and at the end of backward the
parameters are full precision again, with full-precision ``.grad`` holding the reduced values.
Buffers are cast to ``buffer_dtype`` once, at construction.

Where pyc10d differs from torch 2.13 (whose implementation needs an accelerator's streams and
events, and fails on CPU with "cpu backend doesn't support events"):

- the first iteration's gradients are the reduced gradients (torch's Reducer reduces a bucket
  converted to ``param_dtype`` without its views, so its first iteration returns whatever the
  new buffer held), and ``gradient_as_bucket_view=True`` keeps reducing fresh gradients after the
  second iteration (in torch the upcast detaches ``.grad`` from the bucket and later iterations
  reduce stale values). With mixed precision ``.grad`` is full precision, so it cannot be a view
  of a low-precision bucket: it is written by copy whatever ``gradient_as_bucket_view`` says;
- ``param_dtype=None`` leaves the parameters alone (torch's Reducer rejects the gradients with
  "Expected Byte, got Float"), only floating-point buffers are cast (the documented behaviour;
  torch's code also casts integer buffers such as BatchNorm's ``num_batches_tracked``);
- a forward without autograd (``torch.no_grad()``, evaluation) runs in ``param_dtype`` and
  leaves the parameters in full precision afterwards (torch fails: "'NoneType' object has no
  attribute 'next_functions'"); the autograd hooks of all parameters are re-registered before
  each forward, so ``find_unused_parameters`` and parameters of modules whose ``forward`` is not
  called (torch hooks only modules whose ``forward`` runs) work too.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_map

from .grad_bucket import GradBucket


@dataclass
class _MixedPrecision:
    """The dtypes of DDP-native mixed precision (torch's ``_MixedPrecision``, experimental).

    ``param_dtype``: parameters (and floating-point forward inputs) in forward and backward;
    ``reduce_dtype``: the gradient reduction (default: ``param_dtype``, else the parameters');
    ``buffer_dtype``: floating-point buffers, cast once at construction. ``None`` keeps a dtype.
    """

    param_dtype: torch.dtype | None = None
    reduce_dtype: torch.dtype | None = None
    buffer_dtype: torch.dtype | None = None


def _ignored(tensor: torch.Tensor) -> bool:
    return bool(getattr(tensor, "_ddp_ignored", False))


def _free_storage(tensor: torch.Tensor) -> None:
    """Drop the twin's memory between iterations. torch resizes the storage to 0 and keeps the
    shape; an empty tensor instead keeps the parameter picklable (a shaped tensor over an
    empty storage cannot be loaded back)."""
    with torch.no_grad():
        tensor.set_()


def _alloc_storage(tensor: torch.Tensor, shape: torch.Size) -> None:
    if tensor.shape != shape:
        with torch.no_grad():
            tensor.set_(torch.empty(shape, dtype=tensor.dtype, device=tensor.device))


def _check_dtype(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, torch.dtype):
        raise TypeError(
            f"_MixedPrecision.{name} must be a torch.dtype or None, not {type(value).__name__}"
        )


def cast_forward_inputs(dtype: torch.dtype | None, args: tuple, kwargs: dict) -> tuple:
    """``(args, kwargs)`` with floating-point tensors cast to ``dtype`` (torch's
    ``_cast_forward_inputs``; other tensors and ``dtype=None`` leave them as they are)."""
    if dtype is None:
        return args, kwargs

    def cast(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and torch.is_floating_point(x) and x.dtype != dtype:
            return x.to(dtype)
        return x

    return tree_map(cast, args), tree_map(cast, kwargs)


class MixedPrecisionState:
    """What one DDP module needs for mixed precision; built by :meth:`setup`."""

    def __init__(self, ddp: Any, config: Any) -> None:
        # attribute access first: a wrong config raises torch's AttributeError
        self.param_dtype = config.param_dtype
        self.reduce_dtype = config.reduce_dtype
        self.buffer_dtype = config.buffer_dtype
        for name in ("reduce_dtype", "buffer_dtype"):
            _check_dtype(name, getattr(self, name))
        self._ddp_ref = weakref.ref(ddp)
        self._params = [p for p in ddp.module.parameters() if not _ignored(p)]

    @classmethod
    def setup(cls, ddp: Any, config: Any) -> MixedPrecisionState:
        """Give the parameters their twins, cast the buffers, install the reduction hook."""
        state = cls(ddp, config)
        for param in state._params:
            if not hasattr(param, "_mp_param"):
                param._mp_param = torch.zeros_like(
                    param, dtype=state.param_dtype, requires_grad=param.requires_grad
                )
                _free_storage(param._mp_param)
                param._fp_param = param.data
        if state.buffer_dtype is not None:
            for buf in ddp.module.buffers():
                if not _ignored(buf) and torch.is_floating_point(buf):
                    buf.data = buf.to(dtype=state.buffer_dtype)
        ddp.register_comm_hook(state, _reducer_allreduce_and_upcast_hook)
        ddp.reducer._set_mixed_precision_param_dtype(state.param_dtype)
        ddp.reducer._finalize_hooks.append(state.restore)
        return state

    def cast_params(self) -> None:
        """Switch every managed parameter to its ``param_dtype`` twin (torch's root pre-forward
        hook); existing gradients are cast too, so accumulation continues in ``param_dtype``."""
        if self.param_dtype is None:
            return
        with torch.no_grad():
            for param in self._params:
                if param.dtype == self.param_dtype:
                    continue  # already switched (a forward without the backward that restores)
                _alloc_storage(param._mp_param, param.shape)
                param._mp_param.copy_(param.data)
                if param.grad is not None:
                    param.grad.data = param.grad.to(self.param_dtype)
                param.data = param._mp_param

    def pre_forward(self) -> None:
        """Cast the parameters; with autograd on, hook their new gradient accumulators."""
        self.cast_params()
        ddp = self._ddp_ref()
        if ddp is not None and torch.is_grad_enabled() and self.param_dtype is not None:
            ddp.reducer._refresh_autograd_hooks()

    def restore(self) -> None:
        """Full precision again: parameters back to ``_fp_param`` (twins freed), gradients cast
        to the parameters' dtype. Runs at the end of backward, before the reduced gradients are
        written, and after a forward without autograd."""
        if self.param_dtype is None:
            return
        with torch.no_grad():
            for param in self._params:
                fp = param._fp_param
                if param.dtype != fp.dtype:
                    param.data = fp
                    _free_storage(param._mp_param)
                if param.grad is not None and param.grad.dtype != param.dtype:
                    param.grad.data = param.grad.to(param.dtype)


def _reducer_allreduce_and_upcast_hook(
    state: MixedPrecisionState, bucket: GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """Sum the bucket in ``reduce_dtype`` and divide by the world size (torch's hook of the same
    name; the upcast of parameters and gradients happens once, at the end of backward)."""
    ddp = state._ddp_ref()
    assert ddp is not None
    reduce_dtype = state.reduce_dtype
    if reduce_dtype is not None and reduce_dtype != bucket.buffer().dtype:
        bucket.set_buffer(bucket.buffer().to(reduce_dtype))
    world = ddp.process_group.size()
    fut = ddp.reducer._run_allreduce_hook(bucket)
    buffer = bucket.buffer()

    def divide(done: torch.futures.Future) -> torch.Tensor:
        done.value()  # re-raises the collective's error
        return buffer.div_(world)

    return fut.then(divide)
