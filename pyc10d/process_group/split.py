"""Splitting a group and merging groups of other jobs: torch's ``ProcessGroup.split_group`` and
``ProcessGroup.merge_remote_group`` (the methods of :class:`ProcessGroup` call these)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from ..core.timeouts import to_timedelta
from ..store import PrefixStore, Store
from .options import Options
from .process_group import ProcessGroup

MERGE_RANK_KEY = "mergeGroupRank"
"""The counter in a merge's store that hands out the merged group's ranks (torch's key)."""

_SPLIT_COUNTS: weakref.WeakKeyDictionary[ProcessGroup, int] = weakref.WeakKeyDictionary()
"""How many times each group was split (the default ``group_desc`` of a split counts them)."""


def _base_store_of(pg: ProcessGroup) -> Store:
    """The store ``pg`` was made over: the base of its splits' stores."""
    store = getattr(pg, "_base_store", None)
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
    options = Options(
        source.timeout, source.threads, source.bind_host, source.advertise_host, source.lazy_init
    )
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
    (torch's ``ProcessGroup.split_group``; :meth:`ProcessGroup.split_group` calls this).

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
    store = PrefixStore(f"{name}/", _base_store_of(pg))
    child = ProcessGroup(store, members.index(pg.rank()), len(members), options)
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
    over ``store`` (torch's ``ProcessGroup.merge_remote_group``; the method calls this).

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
    merged = ProcessGroup(store, rank, size, options)
    merged._set_group_desc(desc)
    return merged
