"""Subgroups: ``new_group``, ``new_subgroups``, ``new_subgroups_by_enumeration``, ``split_group``.

A subgroup is a ProcessGroup of its members over a store namespace of its own. Every rank of the
default group calls ``new_group`` in the same order (as torch requires), so all agree on the
group's name; with ``use_local_synchronization=True`` only members call, and the name comes from
the member list. Ranks outside a group get ``GroupMember.NON_GROUP_MEMBER`` (torch's None when a
non-member calls ``new_group(..., use_local_synchronization=True)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.timeouts import to_timedelta
from ..process_group import ProcessGroup
from ..store import PrefixStore
from .backends import make_group
from .init import _is_barrier_after_init, _store_based_barrier, group_options
from .state import GroupInfo, GroupMember, _world, default_group, info


def _check_ranks(ranks: Sequence[int], world_size: int) -> list[int]:
    for rank in ranks:
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(
                f"new_group ranks must be integers in [0, {world_size}), got {list(ranks)}"
            )
    if len(set(ranks)) != len(ranks):
        raise ValueError(f"new_group ranks contain duplicates: {list(ranks)}")
    return list(ranks)


def _create(
    ranks: list[int], name: str, timeout: Any, backend: Any, pg_options: Any
) -> ProcessGroup | Any:
    """Make the group on members, over ``PrefixStore("<name>/", default store)`` as in torch;
    the non-member marker elsewhere."""
    default = default_group()
    store = _world.default_store
    me = _world.global_rank
    backend_name = info(default).backend if backend is None else str(backend).lower()
    if me not in ranks:
        return GroupMember.NON_GROUP_MEMBER
    options = group_options(
        timeout if timeout is not None else default.options.timeout, pg_options, name, ranks
    )
    group_store = PrefixStore(f"{name}/", store)
    pg = make_group(backend_name, group_store, ranks.index(me), len(ranks), options, pg_options)
    _world.groups[pg] = GroupInfo(backend_name, ranks, name, group_store)
    return pg


def _barrier_after_init(pg: Any, name: str, members: list[int], local: bool, timeout: Any) -> None:
    """torch's store barrier after ``new_group`` when ``TORCH_DIST_INIT_BARRIER=1``: on the
    group's store among its members (``use_local_synchronization``), else on the default store
    among every rank (non-members too)."""
    if _is_barrier_after_init() != 1:
        return
    default = default_group()
    timeout = default.options.timeout if timeout is None else to_timedelta(timeout)
    if local:
        store, count = info(pg).store, len(members)
    else:
        store, count = _world.default_store, default.size()
    _store_based_barrier(_world.global_rank, store, name, count, timeout)


def _local_name(members: list[int]) -> str:
    """The name of a ``use_local_synchronization`` group: its members and how many such
    groups of the same members this rank made (they create it together, in the same order)."""
    key = tuple(members)
    _world.local_group_counts[key] = _world.local_group_counts.get(key, 0) + 1
    return f"local_{'_'.join(map(str, members))}_{_world.local_group_counts[key]}"


def new_group(
    ranks: Sequence[int] | None = None,
    timeout: Any = None,
    backend: Any = None,
    pg_options: Any = None,
    use_local_synchronization: bool = False,
    group_desc: str | None = None,
    device_id: Any = None,
    sort_ranks: bool = True,
) -> ProcessGroup | Any:
    """A group of ``ranks`` (default: everyone); NON_GROUP_MEMBER on ranks outside it.

    As in torch, with ``use_local_synchronization=True`` only the members call it (and a rank
    outside ``ranks`` that calls it gets None); with ``TORCH_DIST_INIT_BARRIER=1`` the callers
    then wait in :func:`_store_based_barrier` (every rank, or the members when local).
    """
    with _world.lock:
        world_size = default_group().size()
        if use_local_synchronization and ranks is not None and _world.global_rank not in ranks:
            return None
        members = list(range(world_size)) if ranks is None else _check_ranks(ranks, world_size)
        if sort_ranks:
            members.sort()
        if use_local_synchronization:
            name = _local_name(members)
        else:
            _world.group_count += 1
            name = str(_world.group_count)
        pg = _create(members, name, timeout, backend, pg_options)
    _barrier_after_init(pg, name, members, use_local_synchronization, timeout)
    return pg


def new_subgroups_by_enumeration(
    ranks_per_subgroup_list: Sequence[Sequence[int]],
    timeout: Any = None,
    backend: Any = None,
    pg_options: Any = None,
    group_desc: str | None = None,
) -> tuple[ProcessGroup | None, list[ProcessGroup | Any]]:
    """One group per rank list; return (this rank's subgroup or None, all of them)."""
    if not ranks_per_subgroup_list:
        raise ValueError("The arg 'ranks_per_subgroup_list' cannot be empty")
    seen: set[int] = set()
    for ranks in ranks_per_subgroup_list:
        overlap = seen.intersection(ranks)
        if overlap:
            raise ValueError(f"Rank {min(overlap)} has appeared in more than one subgroup.")
        seen.update(ranks)
    current = None
    subgroups = []
    for ranks in ranks_per_subgroup_list:
        subgroup = new_group(ranks, timeout=timeout, backend=backend, pg_options=pg_options)
        subgroups.append(subgroup)
        if _world.global_rank in ranks:
            current = subgroup
    return current, subgroups


def new_subgroups(
    group_size: int | None = None,
    group: Any = None,
    timeout: Any = None,
    backend: Any = None,
    pg_options: Any = None,
    group_desc: str | None = None,
) -> tuple[ProcessGroup | None, list[ProcessGroup | Any]]:
    """Split the ranks into consecutive groups of ``group_size``; return (mine, all)."""
    if group_size is None:
        raise ValueError("new_subgroups needs group_size on CPU (torch defaults to #GPUs)")
    if group_size <= 0:
        raise ValueError(f"The arg 'group_size' ({group_size}) must be positive")
    world_size = default_group().size() if group is None else len(info(group).ranks)
    if world_size < group_size:
        raise ValueError(
            f"The arg 'group_size' ({group_size}) must not exceed the world size ({world_size})"
        )
    if world_size % group_size != 0:
        raise ValueError(f"The world size ({world_size}) must be divisible by '{group_size=}'")
    ranks = list(range(world_size)) if group is None else info(group).ranks
    chunks = [ranks[i : i + group_size] for i in range(0, len(ranks), group_size)]
    return new_subgroups_by_enumeration(chunks, timeout, backend, pg_options, group_desc)


def split_group(
    parent_pg: ProcessGroup | None = None,
    split_ranks: Sequence[Sequence[int]] | None = None,
    timeout: Any = None,
    pg_options: Any = None,
    group_desc: str | None = None,
    backend: Any = None,
) -> ProcessGroup | None:
    """Split ``parent_pg`` into disjoint groups of global ranks; return this rank's (or None)."""
    if not split_ranks:
        raise ValueError("split_ranks cannot be None or empty")
    parent = default_group() if parent_pg is None else parent_pg
    parent_ranks = info(parent).ranks
    for ranks in split_ranks:
        stray = [r for r in ranks if r not in parent_ranks]
        if stray:
            raise ValueError(f"split_ranks {list(ranks)} has ranks {stray} not in the parent")
    seen: set[int] = set()
    for ranks in split_ranks:
        if seen.intersection(ranks):
            raise ValueError(f"split_ranks overlap: {[list(r) for r in split_ranks]}")
        seen.update(ranks)
    for ranks in split_ranks:  # only the members of each split take part in creating it
        if _world.global_rank in ranks:
            return new_group(ranks, timeout, backend, pg_options, use_local_synchronization=True)
    return None
