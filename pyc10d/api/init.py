"""``init_process_group`` and ``destroy_process_group``: the default group's life cycle."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from ..core.timeouts import DEFAULT_PG_TIMEOUT, to_timedelta
from ..process_group import ProcessGroup
from ..process_group.options import Options
from ..rendezvous import rendezvous
from ..store import PrefixStore, Store
from .backends import make_group
from .state import PYC10D, Backend, GroupInfo, _world, is_non_member

log = logging.getLogger(__name__)

GLOO_ALIAS_MESSAGE = (
    "pyc10d: backend 'gloo' is an alias: collectives run on pyc10d's own engine, not torch's "
    "Gloo; get_backend() reports 'gloo' as requested"
)


def group_options(timeout: Any, pg_options: Any, group_name: str, ranks: list[int]) -> Options:
    """Options for a new group: ``pg_options`` (if ours) with ``timeout`` and torch's fields."""
    options = pg_options if isinstance(pg_options, Options) else Options()
    if timeout is not None:
        options.timeout = to_timedelta(timeout)
    options.group_name = group_name
    options.global_ranks_in_group = list(ranks)
    return options


def init_process_group(
    backend: str | None = None,
    init_method: str | None = None,
    timeout: timedelta | None = None,
    world_size: int = -1,
    rank: int = -1,
    store: Store | None = None,
    group_name: str = "",
    pg_options: Any = None,
    device_id: Any = None,
) -> None:
    """Create the default group (torch.distributed.init_process_group).

    Without ``store``, ranks meet through ``init_method`` (default ``env://``). ``backend`` may
    be None (pyc10d), ``"gloo"`` or ``"cpu:gloo"``; NCCL and MPI raise a ValueError. ``"gloo"``
    runs pyc10d's own engine, as every backend name does, and is reported by ``get_backend()``
    as ``"gloo"``; one INFO line on this module's logger says so when the group is created.
    """
    name = Backend(backend) if backend is not None else Backend(PYC10D)
    with _world.lock:
        if _world.default_pg is not None:
            raise ValueError("trying to initialize the default process group twice!")
        timeout = DEFAULT_PG_TIMEOUT if timeout is None else to_timedelta(timeout)
        if store is None:
            if init_method is None:
                init_method = "env://"
            store, rank, world_size = next(
                rendezvous(init_method, rank, world_size, timeout=timeout)
            )
            store.set_timeout(timeout)
        else:
            if init_method is not None:
                raise ValueError("Cannot specify both init_method and store.")
            if rank < 0 or world_size <= 0:
                raise ValueError(
                    f"world_size ({world_size}) and rank ({rank}) must be given with store"
                )
        ranks = list(range(world_size))
        options = group_options(timeout, pg_options, group_name or "0", ranks)
        pg = make_group(
            name, PrefixStore("default_pg", store), rank, world_size, options, pg_options
        )
        _world.default_pg = pg
        _world.default_store = store
        _world.global_rank = rank
        _world.group_count = 0
        _world.local_group_counts.clear()
        _world.groups[pg] = GroupInfo(str(name), ranks, group_name or "0", store)
    if name == Backend.GLOO:
        log.info(GLOO_ALIAS_MESSAGE)


def destroy_process_group(group: ProcessGroup | None = None) -> None:
    """Shut down ``group``, or (None) every group and the default one; as in torch, a group the
    API does not know (never created, or destroyed already) is a ValueError, and a rank outside
    ``group`` does nothing."""
    with _world.lock:
        if group is None or group is _world.default_pg:
            for pg in list(_world.groups):
                pg.shutdown()
            _world.groups.clear()
            _world.default_pg = None
            _world.default_store = None
            _world.global_rank = -1
            return
        if is_non_member(group):
            return
        if group not in _world.groups:
            raise ValueError("Invalid process group specified")
        del _world.groups[group]
        group.shutdown()
