"""Layer 6 — pyc10d as a ``torch.distributed`` backend: ``init_process_group("pyc10d")``.

Registration happens when pyc10d is imported, and also when torch itself is imported if pyc10d
is installed (pyc10d declares a ``torch.backends`` entry point, which torch loads at import unless
``TORCH_DEVICE_BACKEND_AUTOLOAD=0``). So a torchrun script needs no change beyond the backend
string. ``register()`` is idempotent.
"""

from __future__ import annotations

from typing import Any

from .register import BACKEND_NAME, create_process_group, is_registered, register

__all__ = [
    "BACKEND_NAME",
    "ProcessGroupPyc10d",
    "TorchWork",
    "create_process_group",
    "is_registered",
    "register",
]


def __getattr__(name: str) -> Any:
    """``ProcessGroupPyc10d`` and ``TorchWork``, imported on first use (torch imports this
    package at startup through the entry point, so it stays light)."""
    if name == "ProcessGroupPyc10d":
        from .group import ProcessGroupPyc10d

        return ProcessGroupPyc10d
    if name == "TorchWork":
        from .work import TorchWork

        return TorchWork
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
