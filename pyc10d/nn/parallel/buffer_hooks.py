"""Buffer communication hooks: how DDP syncs module buffers, and when (torch's
``_register_buffer_comm_hook``, ``_BufferCommHookLocation``, ``_BufferCommHook``).

Without a hook DDP broadcasts rank 0's buffers before each forward. A hook
``hook(state, named_buffers: dict[str, Tensor])`` replaces that broadcast (say, to allreduce a
counter); it runs before the forward (``PRE_FORWARD``) or after it (``POST_FORWARD``, the
default), only when DDP would have broadcast (``broadcast_buffers=True`` and the previous
iteration synced). It may return a list of futures: DDP then waits for them at the end of the
coming backward instead of at once, so the communication overlaps the backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any


class _BufferCommHookLocation(Enum):
    """Where a buffer communication hook runs: before or after the forward."""

    PRE_FORWARD = auto()
    POST_FORWARD = auto()


@dataclass
class _BufferCommHook:
    """A registered buffer communication hook, its state and where it runs."""

    buffer_comm_hook: Callable
    buffer_comm_hook_state: Any
    buffer_comm_hook_location: _BufferCommHookLocation


def location_name(location: Any) -> str:
    """``"PRE_FORWARD"`` / ``"POST_FORWARD"``: pyc10d's members, torch's, or their names."""
    name = getattr(location, "name", location)
    if name not in ("PRE_FORWARD", "POST_FORWARD"):
        raise ValueError(
            "comm_hook_location must be _BufferCommHookLocation.PRE_FORWARD or POST_FORWARD, "
            f"got {location!r}"
        )
    return str(name)


def make_buffer_hook(state: Any, hook: Callable, location: Any) -> _BufferCommHook:
    """Validate and bundle a hook (AssertionError for a non-callable, as torch)."""
    if not callable(hook):
        raise AssertionError(f"hook must be callable, got {type(hook).__name__}")
    location = _BufferCommHookLocation[location_name(location)]
    return _BufferCommHook(hook, state, location)


def hook_location(ddp: Any) -> str | None:
    """The location name of the DDP module's buffer hook, None without one."""
    hook = getattr(ddp, "buffer_hook", None)
    return None if hook is None else hook.buffer_comm_hook_location.name


def run_buffer_hook(ddp: Any) -> None:
    """Run the registered hook on the named buffers; install the futures it returns."""
    hook = ddp.buffer_hook
    futures = hook.buffer_comm_hook(hook.buffer_comm_hook_state, ddp.named_module_buffers)
    if futures is not None:
        ddp.reducer._install_post_backward_futures(futures)
