"""``init_process_group`` and ``destroy_process_group``: the default group's life cycle; the
store-based barrier torch runs after creating a group (``TORCH_DIST_INIT_BARRIER=1``); default
timeouts and ``get_node_local_rank``."""

from __future__ import annotations

import logging
import os
import time
import warnings
from datetime import timedelta
from typing import Any

from ..core.errors import DistStoreError
from ..core.timeouts import DEFAULT_PG_TIMEOUT, to_timedelta
from ..process_group import ProcessGroup
from ..process_group.options import Options
from ..rendezvous import rendezvous
from ..store import PrefixStore, Store
from .backend_config import plan_group
from .backends import make_group
from .state import PYC10D, Backend, GroupInfo, _world, is_non_member

log = logging.getLogger(__name__)

GLOO_ALIAS_MESSAGE = (
    "pyc10d: backend 'gloo' is an alias: collectives run on pyc10d's own engine, not torch's "
    "Gloo; get_backend() reports 'gloo' as requested"
)

default_pg_timeout: timedelta = DEFAULT_PG_TIMEOUT
"""The timeout of a group when none is given (torch's ``default_pg_timeout``, 30 minutes)."""

default_pg_nccl_timeout: timedelta | None = None
"""torch's NCCL default timeout; None, as in a torch built without NCCL (pyc10d has no NCCL)."""

STORE_BASED_BARRIER_PREFIX = "store_based_barrier_key"
"""The store key of :func:`_store_based_barrier` is ``"<this>:<group name>"`` (torch's)."""

MIN_BARRIER_LOGGING_INTERVAL = timedelta(seconds=10)
"""The shortest wait between two progress checks of the store barrier (torch's 10 s floor)."""


def get_node_local_rank(fallback_rank: int | None = None) -> int:
    """This process's rank on its node (torch's ``get_node_local_rank``).

    ``LOCAL_RANK`` from the environment (set by ``pyc10d-run``/torchrun) if present, else
    ``fallback_rank``; torch's RuntimeError when there is neither.
    """
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    if fallback_rank is not None:
        return int(fallback_rank)
    raise RuntimeError(
        "LOCAL_RANK is not in the environment. Consider passing fallback_rank to allow "
        "`get_node_local_rank` to work, assuming you are not running in a multi-device context "
        "and want the code to run locally instead."
    )


def _get_default_timeout(backend: Any) -> timedelta:
    """The timeout of a group of ``backend`` when none is given (torch's private helper).

    :data:`default_pg_timeout` for every backend. For ``"nccl"``, as torch built without NCCL:
    :data:`default_pg_nccl_timeout` when it has been set, else a warning and the default.
    """
    if str(backend).lower() == "nccl":
        if not isinstance(default_pg_nccl_timeout, timedelta):
            warnings.warn(
                "Attempted to get default timeout for nccl backend, but NCCL support is not "
                "compiled",
                stacklevel=2,
            )
            return default_pg_timeout
        return default_pg_nccl_timeout
    return default_pg_timeout


def _is_barrier_after_init() -> int:
    """``TORCH_DIST_INIT_BARRIER`` (default 0): 1 runs a store barrier after creating a group."""
    return int(os.getenv("TORCH_DIST_INIT_BARRIER", "0"))


def _store_based_barrier(
    rank: int,
    store: Store,
    group_name: str,
    rendezvous_count: int,
    timeout: timedelta,
    logging_interval: timedelta = timedelta(seconds=10),
) -> None:
    """Wait until ``rendezvous_count`` processes have called this for ``group_name`` on ``store``.

    torch's barrier after ``init_process_group``/``new_group`` (not a general ``barrier()``):
    each caller adds 1 to ``store_based_barrier_key:<group_name>``; the one that brings it to
    ``rendezvous_count`` sets ``<key>:last_worker``, which everyone waits for. The wait is checked
    every ``logging_interval`` (at least 10 s + 1 s per 1000 ranks, as torch), logging progress
    at DEBUG; once more than ``timeout`` has passed, torch's DistStoreError "Timed out
    initializing process group in store based barrier on rank ..." is raised.
    """
    store_key = f"{STORE_BASED_BARRIER_PREFIX}:{group_name}"
    store.add(store_key, 1)
    log.debug("Added key: %s to store for rank: %s", store_key, rank)
    world_size = rendezvous_count
    worker_count = store.add(store_key, 0)
    last_worker_key = f"{store_key}:last_worker"
    if worker_count == world_size:
        store.set(last_worker_key, "1")
    interval = max(
        logging_interval, MIN_BARRIER_LOGGING_INTERVAL + timedelta(seconds=world_size / 1000)
    )
    start = time.time()
    while True:
        try:
            store.wait([last_worker_key], interval)
            break
        except RuntimeError as error:  # a store timeout (DistStoreError is a RuntimeError)
            worker_count = store.add(store_key, 0)
            log.debug(
                "Waiting in store based barrier to initialize process group for %s seconds "
                "rank: %s, key: %s (world_size=%s, num_workers_joined=%s, timeout=%s error=%s)",
                time.time() - start,
                rank,
                store_key,
                world_size,
                worker_count,
                timeout,
                error,
            )
            if timedelta(seconds=time.time() - start) > timeout:
                raise DistStoreError(
                    "Timed out initializing process group in store based barrier on "
                    f"rank {rank}, for key: {store_key} (world_size={world_size}, "
                    f"num_workers_joined={worker_count}, timeout={timeout} error={error})"
                ) from None
    log.info(
        "Rank %s: Completed store-based barrier for key:%s with %s nodes.",
        rank,
        store_key,
        world_size,
    )


def group_options(timeout: Any, pg_options: Any, group_name: str, ranks: list[int]) -> Options:
    """Options for a new group: ``pg_options`` (if ours) with ``timeout`` and torch's fields."""
    options = pg_options if isinstance(pg_options, Options) else Options()
    if timeout is not None:
        options.timeout = to_timedelta(timeout)
    options.group_name = group_name
    options.global_ranks_in_group = list(ranks)
    return options


def _meet(
    init_method: str | None,
    store: Store | None,
    rank: int,
    world_size: int,
    timeout: timedelta,
) -> tuple[Store, int, int]:
    """The store, rank and world size of ``init_process_group``'s arguments."""
    if store is not None:
        if init_method is not None:
            raise ValueError("Cannot specify both init_method and store.")
        if rank < 0 or world_size <= 0:
            raise ValueError(
                f"world_size ({world_size}) and rank ({rank}) must be given with store"
            )
        return store, rank, world_size
    if init_method is None:
        init_method = "env://"
    store, rank, world_size = next(rendezvous(init_method, rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    return store, rank, world_size


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

    Without ``store``, ranks meet through ``init_method`` (default ``env://``); the store's
    timeout becomes ``timeout`` (default 30 min). As in torch, the group's store is
    ``PrefixStore("default_pg", store)`` (:func:`_get_default_store`), and with
    ``TORCH_DIST_INIT_BARRIER=1`` every rank waits in :func:`_store_based_barrier` before
    returning. ``backend`` may be None (pyc10d), ``"gloo"``, ``"pyc10d"``, a registered
    backend, or a ``"device:backend,..."`` string of these (``"cpu:gloo"``); it is checked, with
    torch's errors, before anything connects: NCCL, MPI and XCCL raise torch's RuntimeError
    "Distributed package doesn't have NCCL built in" (as a torch built without them does, for
    ``"cpu:gloo,cuda:nccl"`` too). ``"gloo"`` runs pyc10d's own engine, as every backend name
    does, and is reported by ``get_backend()`` as requested; one INFO line on this module's
    logger says so when the group is created.
    """
    name = Backend(backend) if backend is not None else Backend(PYC10D)
    plan = plan_group(name)
    with _world.lock:
        if _world.default_pg is not None:
            raise ValueError("trying to initialize the default process group twice!")
        timeout = _get_default_timeout(name) if timeout is None else to_timedelta(timeout)
        store, rank, world_size = _meet(init_method, store, rank, world_size, timeout)
        ranks = list(range(world_size))
        pg_name = group_name or "0"
        options = group_options(timeout, pg_options, pg_name, ranks)
        default_store = PrefixStore("default_pg", store)
        pg = make_group(name, default_store, rank, world_size, options, pg_options)
        _world.default_pg = pg
        _world.default_store = default_store
        _world.global_rank = rank
        _world.group_count = 0
        _world.local_group_counts.clear()
        _world.groups[pg] = GroupInfo(str(name), ranks, pg_name, default_store, plan.config)
    if Backend.GLOO in plan.backends:
        log.info(GLOO_ALIAS_MESSAGE)
    if _is_barrier_after_init() == 1:
        _store_based_barrier(rank, default_store, pg_name, world_size, timeout)


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


def _abort_process_group(group: ProcessGroup | None = None) -> None:
    """Abort ``group``, or (None or ``group.WORLD``) every group and the default one, and forget
    them (torch's ``_abort_process_group``): pending operations of this rank fail at once,
    without waiting for the peers; sockets, threads and shared memory are released, and
    ``init_process_group`` may be called again. As in torch, a rank outside ``group`` does
    nothing, and a group the API does not know (never created, destroyed or aborted) is torch's
    ValueError "Invalid process group specified or has been destroyed."
    """
    if is_non_member(group):
        return
    with _world.lock:
        pg = _world.default_pg if group is None else group
        if pg is None:
            raise AssertionError("Process group cannot be None")
        if pg not in _world.groups:
            raise ValueError("Invalid process group specified or has been destroyed.")
        if pg is _world.default_pg:
            for member in reversed(list(_world.groups)):
                member.abort()
            _forget_all()
            return
        del _world.groups[pg]
        pg.abort()


def _forget_all() -> None:
    """Clear the registry: no default group, no groups (the caller holds the lock)."""
    _world.groups.clear()
    _world.default_pg = None
    _world.default_store = None
    _world.global_rank = -1
    _world.group_count = 0
