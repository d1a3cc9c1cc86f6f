"""``pyc10d.dist2``: torch's experimental object-oriented group API (``torch.distributed._dist2``).

Groups made here are independent of the module-level API: :func:`new_group` rendezvouses through
``env://`` (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``) and returns a
:class:`~pyc10d.ProcessGroup` that ``init_process_group``'s registry never sees. A group is
used through its own methods (``pg.allreduce(t, timeout=...)``, torch's short forms), split with
``pg.split_group(ranks, ...)`` and joined with groups of other jobs with
``pg.merge_remote_group(store, size, timeout, ...)``. :func:`process_group` makes a group the
thread's current one (:func:`current_process_group`).

Backends are factories registered by name (:func:`register_backend`): ``"gloo"`` (torch's name,
no extra arguments, as torch's) and ``"pyc10d"`` (the same engine; keyword arguments set fields
of :class:`~pyc10d.ProcessGroup.Options`, as torch's ``"nccl"`` factory does with its options).
Both run pyc10d's own engine: there is no NCCL.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Protocol

import torch

from .core.reduce_op import ReduceOp
from .core.timeouts import to_timedelta
from .process_group import ProcessGroup
from .process_group.options import Options
from .rendezvous import rendezvous
from .store import PrefixStore, Store

__all__ = [
    "ProcessGroup",
    "ProcessGroupFactory",
    "ReduceOp",
    "current_process_group",
    "merge_remote_group",
    "new_group",
    "process_group",
    "register_backend",
    "split_group",
]

SERVED_DEVICES = ("cpu", "cuda")
"""Device types a pyc10d group serves (CUDA tensors are staged through host memory)."""

MERGE_RANK_KEY = "mergeGroupRank"
"""The counter in a merge's store that hands out the merged group's ranks (torch's key)."""


class ProcessGroupFactory(Protocol):
    """What :func:`register_backend` takes: makes a group of ``world_size`` ranks over ``store``
    (torch's ``ProcessGroupFactory``)."""

    def __call__(
        self,
        store: Store,
        rank: int,
        world_size: int,
        timeout: timedelta,
        device: torch.device,
        **kwargs: object,
    ) -> ProcessGroup: ...


_BACKENDS: dict[str, ProcessGroupFactory] = {}

_STORES: weakref.WeakKeyDictionary[ProcessGroup, Store] = weakref.WeakKeyDictionary()
"""The store each group made here was created over: the base of its splits' stores."""

_SPLIT_COUNTS: weakref.WeakKeyDictionary[ProcessGroup, int] = weakref.WeakKeyDictionary()
"""How many times each group was split (the default ``group_desc`` of a split counts them)."""

_current = threading.local()


def register_backend(name: str, func: ProcessGroupFactory) -> None:
    """Make ``new_group(backend=name, ...)`` build its group with ``func`` (torch's).

    ``func(store, rank, world_size, timeout, device, **kwargs)`` returns the group.
    ValueError, torch's "Backend <name> already registered", for a name already taken.
    """
    if name in _BACKENDS:
        raise ValueError(f"Backend {name} already registered")
    _BACKENDS[name] = func


def _check_device(backend: str, device: torch.device) -> None:
    if device.type not in SERVED_DEVICES:
        raise ValueError(
            f"dist2 backend {backend!r} runs on pyc10d's engine, which serves "
            f"{' and '.join(SERVED_DEVICES)} tensors, not device {str(device)!r}"
        )


def _pyc10d_factory(
    store: Store,
    rank: int,
    world_size: int,
    timeout: timedelta,
    device: torch.device,
    **kwargs: object,
) -> ProcessGroup:
    """The ``"pyc10d"`` backend: a pyc10d group; ``kwargs`` set fields of its Options
    (``threads``, ``bind_host``, ``advertise_host``...); KeyError "Unknown option <k>" (torch's
    ``"nccl"`` factory's) for any other name."""
    _check_device("pyc10d", device)
    options = Options(timeout=timeout)
    for key, value in kwargs.items():
        if key.startswith("_") or not hasattr(options, key):
            raise KeyError(f"Unknown option {key}")
        setattr(options, key, value)
    pg = _make(store, rank, world_size, options)
    return pg


def _gloo_factory(
    store: Store,
    rank: int,
    world_size: int,
    timeout: timedelta,
    device: torch.device,
    **kwargs: object,
) -> ProcessGroup:
    """The ``"gloo"`` backend: a pyc10d group (pyc10d's engine, not torch's Gloo). As torch's, it
    takes no extra arguments: AssertionError "Gloo backend received unexpected kwargs"."""
    if kwargs:
        raise AssertionError(f"Gloo backend received unexpected kwargs: {sorted(kwargs)}")
    _check_device("gloo", device)
    return _make(store, rank, world_size, Options(timeout=timeout))


def _make(store: Store, rank: int, world_size: int, options: Options) -> ProcessGroup:
    """A pyc10d group over ``store``, remembered as the base of its splits.

    Sequence numbers start at 0 on every rank, so there is nothing for torch's
    ``_set_sequence_number_for_group()`` to agree on.
    """
    pg = ProcessGroup(store, rank, world_size, options)
    _STORES[pg] = store
    return pg


register_backend("gloo", _gloo_factory)
register_backend("pyc10d", _pyc10d_factory)


def new_group(
    backend: str,
    timeout: timedelta,
    device: str | torch.device,
    **kwargs: object,
) -> ProcessGroup:
    """A new group of every process of the job, not registered with the module-level API
    (torch's ``_dist2.new_group``).

    The processes meet through ``env://`` (``MASTER_ADDR``/``MASTER_PORT``/``RANK``/
    ``WORLD_SIZE``), which must finish within ``timeout``; the store keeps ``timeout`` and the
    group's calls default to it. ``kwargs`` go to the backend's factory. ValueError, torch's
    "Backend <name> not registered" (with the registered names), for an unknown ``backend``.
    """
    if backend not in _BACKENDS:
        raise ValueError(
            f"Backend {backend} not registered (registered dist2 backends: {sorted(_BACKENDS)})"
        )
    device = torch.device(device)
    timeout = to_timedelta(timeout)
    store, rank, world_size = next(iter(rendezvous("env://", timeout=timeout)))
    store.set_timeout(timeout)
    return _BACKENDS[backend](store, rank, world_size, timeout, device, **kwargs)


def current_process_group() -> ProcessGroup | None:
    """This thread's current group (set by :func:`process_group`); None outside one."""
    return getattr(_current, "pg", None)


@contextmanager
def process_group(pg: ProcessGroup) -> Generator[None, None, None]:
    """Make ``pg`` this thread's current group inside the ``with`` block (nests; the previous
    one is restored on exit, also after an exception)."""
    previous = current_process_group()
    _current.pg = pg
    try:
        yield
    finally:
        _current.pg = previous


def _base_store(pg: ProcessGroup) -> Store:
    """The store ``pg`` was made over (that of a group made elsewhere: its own namespace)."""
    store = _STORES.get(pg)
    if store is None:
        store = getattr(pg, "_store", None)
    if not isinstance(store, Store):
        raise ValueError(
            f"split_group needs a group connected over a store; {pg!r} has none "
            "(a ProcessGroup(rank, size) base group)"
        )
    return store


def _check_split_ranks(pg: ProcessGroup, ranks: Sequence[int]) -> list[int]:
    """``ranks`` sorted, after torch's checks (RuntimeError, its messages) and pyc10d's range
    check (ValueError naming the ranks outside the group)."""
    ranks = list(ranks)
    if not ranks:
        raise RuntimeError(
            "Split ranks cannot be empty. Please provide a non-empty list of ranks to split "
            "the group."
        )
    if len(ranks) > pg.size():
        raise RuntimeError(
            "the split group's size should be no larger than the world_size set by "
            "init_process_group"
        )
    if len(set(ranks)) != len(ranks):
        raise RuntimeError(
            "Split ranks should not have duplicates. Please provide a list of unique ranks to "
            "split the group."
        )
    stray = [r for r in ranks if isinstance(r, bool) or not isinstance(r, int)]
    stray += [r for r in ranks if r not in stray and not 0 <= r < pg.size()]
    if stray:
        raise ValueError(
            f"split_group ranks {ranks} include {stray}, not ranks of this group of size "
            f"{pg.size()} (split ranks are ranks in the group being split, 0 to {pg.size() - 1})"
        )
    return sorted(ranks)


def _child_options(pg: ProcessGroup, opts: Any, name: str, timeout: Any) -> Options:
    """A fresh Options for a split or merge: ``opts`` (or the parent's) copied, named ``name``,
    with ``timeout`` when given."""
    source = pg.options if opts is None else opts
    if not isinstance(source, Options):
        raise TypeError(f"opts must be a pyc10d ProcessGroup.Options, got {type(source).__name__}")
    options = Options(source.timeout, source.threads, source.bind_host, source.advertise_host)
    options._devices = list(source._devices)
    options.backend = source.backend
    options.group_name = name
    if timeout is not None:
        options.timeout = to_timedelta(timeout)
    return options


def _global_ranks(pg: ProcessGroup) -> list[int]:
    """The global rank of each rank of ``pg`` (its own ranks when it does not know them)."""
    known = list(getattr(pg.options, "global_ranks_in_group", []) or [])
    return known if len(known) == pg.size() else list(range(pg.size()))


def split_group(
    pg: ProcessGroup,
    ranks: Sequence[int],
    timeout: timedelta | None = None,
    opts: Options | None = None,
    group_name: str | None = None,
    group_desc: str | None = None,
) -> ProcessGroup | None:
    """A group of ``pg``'s ranks ``ranks`` (sorted); None on the ranks of ``pg`` outside it
    (torch's ``ProcessGroup.split_group``, also bound as ``pg.split_group(...)``).

    Only the members take part (no rank outside ``ranks`` needs to call). The new group runs
    over ``PrefixStore("<group_name>/", <pg's store>)``; ``group_name`` defaults to
    ``"<pg's name>:split:<sorted ranks>"``, ``group_desc`` to ``"<pg's desc>:split:<count>"``,
    its options to a copy of ``opts`` (default: ``pg``'s) with ``timeout`` when given.
    RuntimeError (torch's messages) for empty, too many or duplicate ranks; ValueError naming
    the ranks that are not ranks of ``pg``.
    """
    members = _check_split_ranks(pg, ranks)
    count = _SPLIT_COUNTS.get(pg, 0)
    _SPLIT_COUNTS[pg] = count + 1
    name = group_name if group_name is not None else f"{pg.group_name}:split:{members}"
    desc = group_desc if group_desc is not None else f"{pg.group_desc}:split:{count}"
    if pg.rank() not in members:
        return None
    options = _child_options(pg, opts, name, timeout)
    parent_global = _global_ranks(pg)
    options.global_ranks_in_group = [parent_global[r] for r in members]
    store = PrefixStore(f"{name}/", _base_store(pg))
    child = _make(store, members.index(pg.rank()), len(members), options)
    child._set_group_desc(desc)
    return child


def merge_remote_group(
    pg: ProcessGroup,
    store: Store,
    size: int,
    timeout: timedelta,
    group_name: str | None = None,
    group_desc: str | None = None,
) -> ProcessGroup:
    """Join ``size`` processes, each calling this through its own group, into one new group
    over ``store`` (torch's ``ProcessGroup.merge_remote_group``, also bound as a method).

    Ranks are handed out in arrival order by the store's ``mergeGroupRank`` counter. The group
    keeps ``pg``'s options with ``timeout``; ``group_name`` defaults to ``"<pg's name>:merge"``,
    ``group_desc`` to ``"<pg's desc>:merge"``. ValueError when more than ``size`` processes
    join through ``store``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"merge_remote_group size must be a positive int, got {size!r}")
    timeout = to_timedelta(timeout)
    rank = store.add(MERGE_RANK_KEY, 1) - 1
    if rank >= size:
        raise ValueError(
            f"merge_remote_group: {rank + 1} processes joined the merge through this store, "
            f"but size={size}"
        )
    name = group_name if group_name is not None else f"{pg.group_name}:merge"
    desc = group_desc if group_desc is not None else f"{pg.group_desc}:merge"
    options = _child_options(pg, None, name, timeout)
    options.global_ranks_in_group = []
    merged = _make(store, rank, size, options)
    merged._set_group_desc(desc)
    return merged


# torch's ProcessGroup has these as methods; bind ours unless the class already has them.
for _name, _method in (("split_group", split_group), ("merge_remote_group", merge_remote_group)):
    if not hasattr(ProcessGroup, _name):
        setattr(ProcessGroup, _name, _method)
del _name, _method
