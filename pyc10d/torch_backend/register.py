"""Registering pyc10d with ``torch.distributed.Backend`` (kept light: torch imports it at startup).

The creator is torch's extended form: it receives torch's ``_DistributedBackendOptions`` (the
group's store, rank, size and timeout) and the ``pg_options`` the user passed, which must be a
``pyc10d.ProcessGroup.Options`` or None.
"""

from __future__ import annotations

from typing import Any

import torch

BACKEND_NAME = "pyc10d"
"""The backend string users give ``init_process_group`` / ``new_group``."""

DEVICES = ["cpu"]
"""Devices pyc10d serves (a list: torch iterates a string's characters)."""


def create_process_group(dist_backend_opts: Any, backend_options: Any = None) -> Any:
    """torch's backend creator: a :class:`ProcessGroupPyc10d` over torch's group store."""
    from ..process_group.options import Options
    from .group import ProcessGroupPyc10d

    if backend_options is not None and not isinstance(backend_options, Options):
        raise TypeError(
            "pg_options for the pyc10d backend must be a pyc10d.ProcessGroup.Options, "
            f"got {type(backend_options).__name__}"
        )
    return ProcessGroupPyc10d(
        dist_backend_opts.store,
        dist_backend_opts.group_rank,
        dist_backend_opts.group_size,
        dist_backend_opts.timeout,
        backend_options,
    )


def is_registered() -> bool:
    """True once torch.distributed knows the ``"pyc10d"`` backend."""
    if not torch.distributed.is_available():
        return False
    return BACKEND_NAME.upper() in torch.distributed.Backend._plugins


def register() -> None:
    """Make ``"pyc10d"`` a torch.distributed backend for CPU tensors (idempotent)."""
    if not torch.distributed.is_available() or is_registered():
        return
    torch.distributed.Backend.register_backend(
        BACKEND_NAME, create_process_group, extended_api=True, devices=DEVICES
    )
