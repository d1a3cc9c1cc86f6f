"""The stock DDP communication hooks (torch's ``ddp_comm_hooks.default_hooks``).

A hook is called as ``hook(state, bucket)`` with a :class:`~pyc10d.nn.parallel.GradBucket` and
returns a ``torch.futures.Future`` whose value is the bucket's averaged flat gradient tensor. Here
``state`` is the process group to reduce over (None: the default group).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ...api import all_reduce, get_world_size
from ...process_group import ProcessGroup

if TYPE_CHECKING:
    from ...nn.parallel.grad_bucket import GradBucket

__all__ = [
    "allreduce_hook",
    "bf16_compress_hook",
    "bf16_compress_wrapper",
    "fp16_compress_hook",
    "fp16_compress_wrapper",
]

Hook = Callable[[Any, "GradBucket"], torch.futures.Future]
_SHORT_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}  # as in torch's wrapper names


def _group_size(process_group: ProcessGroup | None) -> int:
    """The number of ranks averaged over: the size of ``process_group`` (None: default group)."""
    return get_world_size(process_group)


def _allreduce_fut(
    process_group: ProcessGroup | None, tensor: torch.Tensor
) -> torch.futures.Future:
    """Average ``tensor`` in place across the group; a future of ``tensor`` once it is done.

    As in torch, the division comes first (so float16 sums do not overflow).
    """
    tensor.div_(_group_size(process_group))
    work = all_reduce(tensor, group=process_group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def allreduce_hook(process_group: ProcessGroup | None, bucket: GradBucket) -> torch.futures.Future:
    """Average the bucket's buffer over ``process_group`` by allreduce (torch's ``allreduce_hook``).

    Gives what DDP gives with no hook registered; the future holds the averaged buffer.
    """
    return _allreduce_fut(process_group, bucket.buffer())


def _compress_hook(
    dtype: torch.dtype, process_group: ProcessGroup | None, bucket: GradBucket
) -> torch.futures.Future:
    """Allreduce a ``dtype`` copy of the buffer divided by the group size; copy it back in place."""
    buffer = bucket.buffer()
    compressed = buffer.to(dtype).div_(_group_size(process_group))

    def decompress(fut: torch.futures.Future) -> torch.Tensor:
        # Written back into the original buffer, as torch does, to keep peak memory down.
        buffer.copy_(fut.value()[0])
        return buffer

    work = all_reduce(compressed, group=process_group, async_op=True)
    return work.get_future().then(decompress)


def fp16_compress_hook(
    process_group: ProcessGroup | None, bucket: GradBucket
) -> torch.futures.Future:
    """Allreduce the buffer as float16, divided by the group size (torch's ``fp16_compress_hook``).

    The result is cast back into the buffer's own dtype; the future holds the buffer.
    """
    return _compress_hook(torch.float16, process_group, bucket)


def bf16_compress_hook(
    process_group: ProcessGroup | None, bucket: GradBucket
) -> torch.futures.Future:
    """Allreduce the buffer as bfloat16, divided by the group size (torch's ``bf16_compress_hook``).

    The result is cast back into the buffer's own dtype; the future holds the buffer.
    """
    return _compress_hook(torch.bfloat16, process_group, bucket)


def _compress_wrapper(dtype: torch.dtype, hook: Hook) -> Hook:
    """``hook`` run on a ``dtype`` copy of the bucket's buffer, its result cast back."""

    def wrapped(hook_state: Any, bucket: GradBucket) -> torch.futures.Future:
        original = bucket.buffer()
        bucket.set_buffer(original.to(dtype))
        fut = hook(hook_state, bucket)

        def decompress(fut: torch.futures.Future) -> torch.Tensor:
            original.copy_(fut.value())
            bucket.set_buffer(original)
            return original

        return fut.then(decompress)

    wrapped.__name__ = f"{_SHORT_NAMES[dtype]}_compress_wrapper_hook"
    wrapped.__qualname__ = wrapped.__name__
    wrapped.__doc__ = f"``{getattr(hook, '__name__', hook)}`` run on a {dtype} copy of the bucket."
    return wrapped


def fp16_compress_wrapper(hook: Hook) -> Hook:
    """Wrap ``hook`` to run on a float16 copy of the buffer (torch's ``fp16_compress_wrapper``).

    The hook's result is cast back into the original buffer's dtype, so
    ``fp16_compress_wrapper(allreduce_hook)`` behaves as ``fp16_compress_hook``.
    """
    return _compress_wrapper(torch.float16, hook)


def bf16_compress_wrapper(hook: Hook) -> Hook:
    """Wrap ``hook`` to run on a bfloat16 copy of the buffer (torch's ``bf16_compress_wrapper``).

    The hook's result is cast back into the original buffer's dtype, so
    ``bf16_compress_wrapper(allreduce_hook)`` behaves as ``bf16_compress_hook``.
    """
    return _compress_wrapper(torch.bfloat16, hook)
