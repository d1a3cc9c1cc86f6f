"""Registering pyc10d with ``torch.distributed.Backend``, and the creator torch calls.

The registration itself (name, devices, creator) is in the top-level module
``_pyc10d_torch_entry``, which torch's entry point loads without importing pyc10d. The creator
is torch's extended form: it receives torch's ``_DistributedBackendOptions`` (the group's store,
rank, size and timeout) and the ``pg_options`` the user passed, which must be a
``pyc10d.ProcessGroup.Options`` or None.
"""

from __future__ import annotations

from typing import Any

from _pyc10d_torch_entry import BACKEND_NAME, DEVICES, is_registered, register

__all__ = ["BACKEND_NAME", "DEVICES", "create_process_group", "is_registered", "register"]


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
