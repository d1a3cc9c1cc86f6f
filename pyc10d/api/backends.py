"""Which ProcessGroup a backend name makes: pyc10d's own, or a registered third-party one.

``Backend.register_backend(name, creator, extended_api=...)`` records a creator; groups created
with that backend name (``init_process_group``, ``new_group``) are built by it, with torch's two
calling conventions. ``"gloo"`` and ``"pyc10d"`` are pyc10d's engine. A ``"device:backend,..."``
string is checked first as torch checks it (:func:`~pyc10d.api.backend_config.plan_group`);
its first registered backend builds the group, else pyc10d's engine does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from ..process_group import ProcessGroup, Work
from ..process_group.options import Options
from ..store import Store
from .backend_config import plan_group


@dataclass
class DistributedBackendOptions:
    """What an ``extended_api`` creator receives first (torch's ``_DistributedBackendOptions``)."""

    store: Store
    group_rank: int
    group_size: int
    timeout: timedelta
    group_id: str
    global_ranks_in_group: list[int] = field(default_factory=list)


def make_group(
    backend: str, store: Store, rank: int, size: int, options: Options, pg_options: Any
) -> ProcessGroup | Any:
    """The group for ``backend``: a registered plugin's creator output, else pyc10d's group.

    As in torch, a plain creator is called as ``creator(store, rank, size, timeout)`` and an
    ``extended_api`` one as ``creator(DistributedBackendOptions(...), pg_options)``.
    """
    plugin = plan_group(str(backend)).plugin
    if plugin is None:
        return ProcessGroup(store, rank, size, options)
    if not plugin.extended_api:
        return plugin.creator_fn(store, rank, size, options.timeout)
    backend_options = DistributedBackendOptions(
        store, rank, size, options.timeout, options.group_name, list(options.global_ranks_in_group)
    )
    return plugin.creator_fn(backend_options, pg_options)


class _Work(Work):
    """torch's ``dist._Work``: the base of a Python backend's Work, made with no arguments
    (``class DummyWork(dist._Work)`` overriding ``wait``)."""

    def __init__(self, op_type: str = "unknown", seq: int = -1, outputs: Any = None) -> None:
        super().__init__(op_type, seq, [] if outputs is None else outputs)
