"""torch's entry point for pyc10d: makes ``"pyc10d"`` a ``torch.distributed`` backend.

torch calls :func:`register` while it is being imported (the ``torch.backends`` entry-point
group; ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` turns that off). It lives outside the ``pyc10d``
package so that every ``import torch`` on a machine with pyc10d installed does not also import
all of pyc10d: pyc10d is loaded only when a pyc10d group is created.
"""

from __future__ import annotations

from typing import Any

BACKEND_NAME = "pyc10d"
"""The backend string users give ``init_process_group`` / ``new_group``."""

DEVICES = ["cpu"]
"""Devices pyc10d serves (a list: torch iterates a string's characters)."""


def create(dist_backend_opts: Any, backend_options: Any = None) -> Any:
    """torch's backend creator; imports pyc10d on first use."""
    from pyc10d.torch_backend.register import create_process_group

    return create_process_group(dist_backend_opts, backend_options)


def is_registered() -> bool:
    """True once torch.distributed knows the ``"pyc10d"`` backend."""
    import torch.distributed as dist

    return dist.is_available() and BACKEND_NAME.upper() in dist.Backend._plugins


def register() -> None:
    """Register ``"pyc10d"`` for CPU tensors (idempotent; nothing without torch.distributed)."""
    import torch.distributed as dist

    if not dist.is_available() or is_registered():
        return
    dist.Backend.register_backend(BACKEND_NAME, create, extended_api=True, devices=DEVICES)
