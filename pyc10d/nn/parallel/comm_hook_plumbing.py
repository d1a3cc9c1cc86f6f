"""How the Reducer runs communication hooks: the default allreduce, user hooks, their results.

A hook is ``hook(state, bucket: GradBucket) -> torch.futures.Future`` whose value is the reduced
flat tensor (or a one-element list of it), as in torch. ``check_comm_hook`` mirrors torch's
``DistributedDataParallel._check_comm_hook``; the default reduction mirrors the C++
``_AllReduceBySumCommHook`` (gradients were already divided by the world size when copied in).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from ...process_group import ProcessGroup
from .grad_bucket import GradBucket
from .reducer_messages import not_a_future

CommHook = Callable[[Any, GradBucket], torch.futures.Future]


def allreduce_by_sum(pg: ProcessGroup, bucket: GradBucket) -> torch.futures.Future:
    """Start a SUM allreduce of ``bucket.buffer()``; the future's value is ``[buffer]``.

    Complex buffers are reduced as real views (the same bytes); sparse buffers through the
    process group's sparse allreduce.
    """
    buffer = bucket.buffer()
    wire = torch.view_as_real(buffer) if buffer.is_complex() else buffer
    future = pg.allreduce([wire]).get_future()
    if wire is buffer:
        return future
    return future.then(lambda fut: _then_value(fut, [buffer]))


def _then_value(fut: torch.futures.Future, value: Any) -> Any:
    fut.value()  # re-raises the collective's error
    return value


def run_hook(hook: CommHook, state: Any, bucket: GradBucket) -> torch.futures.Future:
    """Call a registered hook; RuntimeError (torch's text) unless it returns a Future."""
    result = hook(state, bucket)
    if not isinstance(result, torch._C.Future):  # torch.futures.Future, or what .then() gives
        raise RuntimeError(not_a_future(result))
    return result


def parse_hook_result(value: Any) -> torch.Tensor:
    """The tensor in a hook's future value: the tensor itself or the first of a list of them."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise RuntimeError(
        "DDP communication hook's future must hold a tensor (or a list of tensors) with the "
        f"reduced bucket, but it holds {type(value).__module__}.{type(value).__qualname__}"
    )


def check_comm_hook(hook: Any) -> None:
    """Validate a hook before registering it, with torch's errors.

    TypeError if it is not callable ("Communication hook must be callable.") or cannot take
    ``(state, bucket)``; ValueError if ``bucket`` or the return value carry another annotation
    than ``GradBucket`` / ``torch.futures.Future[torch.Tensor]``.
    """
    if not callable(hook):
        raise TypeError("Communication hook must be callable.")
    try:
        sig = inspect.signature(hook)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    try:
        sig.bind(None, None)
    except TypeError as exc:
        raise TypeError(
            "Communication hook must take two arguments, (state, bucket): "
            f"{getattr(hook, '__qualname__', hook)!r} has signature {sig} ({exc})"
        ) from None
    bucket = sig.parameters.get("bucket")
    if bucket is not None and not _is_grad_bucket(bucket.annotation):
        raise ValueError("Communication hook: bucket annotation should be dist.GradBucket.")
    if not _is_future(sig.return_annotation):
        raise ValueError(
            "Communication hook: return annotation should be torch.futures.Future[torch.Tensor]."
        )


def _is_grad_bucket(annotation: Any) -> bool:
    if annotation is inspect.Parameter.empty:
        return True
    if isinstance(annotation, str):  # from __future__ import annotations
        return annotation.split(".")[-1] == "GradBucket"
    return getattr(annotation, "__name__", None) == "GradBucket"


def _is_future(annotation: Any) -> bool:
    if annotation is inspect.Signature.empty:
        return True
    if isinstance(annotation, str):
        return "Future" in annotation
    origin = getattr(annotation, "__origin__", annotation)
    return isinstance(origin, type) and issubclass(origin, torch._C.Future)
