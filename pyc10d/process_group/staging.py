"""Device tensors (e.g. CUDA) go through host memory: copied to CPU, reduced there, copied back.

``@staged_on_host`` wraps a ProcessGroup method: when any tensor argument is not on the CPU, the
method runs on CPU copies, and the returned Work completes only after the results have been
copied back into the original tensors (its future then holds the originals, as torch's does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from .work import Work


def is_host(tensor: torch.Tensor) -> bool:
    """True for tensors the transport can read directly (CPU memory)."""
    return tensor.device.type == "cpu"


def _any_off_host(values: Any) -> bool:
    """True if any tensor in ``values`` (nested lists and tuples) lives off the host."""
    for value in values:
        if isinstance(value, torch.Tensor):
            if not value.is_cpu:
                return True
        elif isinstance(value, (list, tuple)) and _any_off_host(value):
            return True
    return False


def _to_host(value: Any, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """``value`` with every non-host tensor replaced by a CPU copy (recorded in ``pairs``)."""
    if isinstance(value, torch.Tensor):
        if is_host(value):
            return value
        host = value.to("cpu", copy=True)
        pairs.append((value, host))
        return host
    if isinstance(value, list):
        return [_to_host(item, pairs) for item in value]
    if isinstance(value, tuple):
        return tuple(_to_host(item, pairs) for item in value)
    return value


def _restore(value: Any, originals: dict[int, torch.Tensor]) -> Any:
    """``value`` with staged host tensors swapped back for the originals."""
    if isinstance(value, torch.Tensor):
        return originals.get(id(value), value)
    if isinstance(value, list):
        return [_restore(item, originals) for item in value]
    return value


class StagedWork(Work):
    """A Work that finishes once the host results are copied back to their devices."""

    def __init__(self, inner: Work, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        originals = {id(host): device for device, host in pairs}
        super().__init__(inner.op_type, inner.seq, _restore(inner._outputs, originals))

        def copy_back(future: torch.futures.Future) -> None:
            try:
                value = future.value()
                for device, host in pairs:
                    device.copy_(host)
            except BaseException as exc:
                self._fail(exc)
            else:
                self._source = inner._source
                self._complete(_restore(value, originals))

        inner._future_of().add_done_callback(copy_back)
        self._steal = lambda _work, run_here: inner._run_queued(run_here)


def staged_on_host(method: Callable[..., Work]) -> Callable[..., Work]:
    """Decorate a ProcessGroup method so device tensors are staged through host memory."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Work:
        if not _any_off_host(args) and not _any_off_host(kwargs.values()):
            return method(self, *args, **kwargs)
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        host_args = _to_host(list(args), pairs)
        host_kwargs = {name: _to_host(value, pairs) for name, value in kwargs.items()}
        if not pairs:
            return method(self, *args, **kwargs)
        return StagedWork(method(self, *host_args, **host_kwargs), pairs)

    return wrapper
