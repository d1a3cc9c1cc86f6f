"""Optimizers run in backward, bucket by bucket, once the bucket's gradients are averaged.

``torch.distributed.optim._apply_optimizer_in_backward(optimizer_class, params, kwargs)`` gives
each parameter a list ``param._in_backward_optimizers`` and a hook that steps them as soon as
its local gradient is accumulated. When DDP manages such a parameter it removes that hook (on
its first forward, as torch's DDP does in ``_lazy_init``) and registers a communication hook
instead: each bucket is allreduced and divided by the world size, each of its parameters that
has in-backward optimizers gets the averaged gradient and their ``step()`` runs, and at the end
of backward the ``.grad`` of those parameters is set to None (torch's
``_apply_optim_in_backward_hook``). Parameters DDP ignores keep the local hook.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.autograd import Variable

from .grad_bucket import GradBucket

# the modules whose ``param_to_optim_hook_handle_map`` may hold a parameter's local hooks
_HANDLE_MAP_MODULES = (
    "torch.distributed.optim.apply_optimizer_in_backward",
    "pyc10d.optim.apply_optimizer_in_backward",
)


def _local_hook_handles(param: torch.Tensor) -> list[Any]:
    handles: list[Any] = []
    for name in _HANDLE_MAP_MODULES:
        module = sys.modules.get(name)  # only loaded if someone applied optimizers through it
        mapping = getattr(module, "param_to_optim_hook_handle_map", None)
        if mapping is not None:
            handles.extend(mapping.get(param, []))
    return handles


def setup_in_backward_optimizers(ddp: Any) -> None:
    """If a managed parameter has in-backward optimizers, take them over (see module doc)."""
    params = ddp._module_parameters
    if not any(hasattr(p, "_in_backward_optimizers") for p in params):
        return
    for param in params:
        for handle in _local_hook_handles(param):
            handle.remove()
    ddp.register_comm_hook(
        weakref.ref(ddp),
        _apply_optim_in_backward_hook(gradient_is_bucket_view=ddp.gradient_as_bucket_view),
    )
    ddp.reducer._set_optimizer_in_backward()


class _OptimInBackwardHookState:
    """Whether this backward already queued the callback that clears the gradients."""

    def __init__(self) -> None:
        self.callback_queued = False


def _apply_optim_in_backward_hook(
    gradient_is_bucket_view: bool,
) -> Callable[[Any, GradBucket], torch.futures.Future[torch.Tensor]]:
    """The communication hook that steps in-backward optimizers after each bucket's average."""
    hook = partial(
        _optim_in_backward_hook,
        gradient_is_bucket_view=gradient_is_bucket_view,
        hook_state=_OptimInBackwardHookState(),
    )
    # the name DDP's logging data reports ("comm_hook"), as torch's
    name = "apply_optim_in_backward_hook"
    hook.__name__ = name  # type: ignore[attr-defined]
    hook.__qualname__ = f"_apply_optim_in_backward_hook.<locals>.{name}"  # type: ignore[attr-defined]
    return hook


def _optim_in_backward_hook(
    ddp_ref: weakref.ref,
    bucket: GradBucket,
    gradient_is_bucket_view: bool,
    hook_state: _OptimInBackwardHookState,
) -> torch.futures.Future[torch.Tensor]:
    """Allreduce and average the bucket (waiting, as torch does), give each parameter with
    in-backward optimizers its averaged gradient and step them; the first call of a backward
    queues the callback that clears those gradients at its end."""
    ddp = ddp_ref()
    assert ddp is not None
    ddp.reducer._run_allreduce_hook(bucket).wait()
    bucket.buffer().div_(ddp.process_group.size())
    for param, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
        optimizers = getattr(param, "_in_backward_optimizers", None)
        if optimizers is None:
            continue
        if not gradient_is_bucket_view:  # else .grad already is the bucket's view
            param.grad = grad
        for optimizer in optimizers:
            optimizer.step()
    if not hook_state.callback_queued:
        hook_state.callback_queued = True
        Variable._execution_engine.queue_callback(partial(_clear_grads, ddp_ref, hook_state))
    result: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    result.set_result(bucket.buffer())
    return result


def _clear_grads(ddp_ref: weakref.ref, hook_state: _OptimInBackwardHookState) -> None:
    """End of backward: the optimizers ran, so their parameters' gradients go (as in torch)."""
    hook_state.callback_queued = False
    ddp = ddp_ref()
    if ddp is None:
        return
    for param in ddp._module_parameters:
        if hasattr(param, "_in_backward_optimizers"):
            param.grad = None
