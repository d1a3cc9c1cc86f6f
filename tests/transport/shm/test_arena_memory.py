"""The arena's memory: every segment (this rank's and its peers') is faulted in when the arena is
built, so that no collective pays page faults on a slot's first use, and the torch threads a
rank's collectives may use (its share of the cores)."""

from __future__ import annotations

import os

from pyc10d.testing import world_sizes
from pyc10d.transport.shm.arena import threads_per_rank

from tests.helpers.shm import MiB, arena_of, run


def _arena_mappings() -> list[tuple[int, int]]:
    """(Size kB, Rss kB) of every mapping of an arena segment in this process."""
    found, current = [], None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                current = [0, 0] if "memfd:pyc10d-arena" in line else None
                if current is not None:
                    found.append(current)
            elif current is not None and fields[0] in ("Size:", "Rss:"):
                current[0 if fields[0] == "Size:" else 1] = int(fields[1])
    return [(size, rss) for size, rss in found]


def resident(ctx) -> list[tuple[int, int]]:
    arena = arena_of(ctx, 1 * MiB)
    mappings = _arena_mappings()
    ctx.store.barrier("measured", ctx.world_size, 30)
    arena.close()
    return mappings


@world_sizes(2, 3)
def test_every_segment_is_resident_once_the_arena_is_built(world_size):
    for mappings in run(resident, world_size):
        assert len(mappings) == world_size, mappings  # its own segment and every peer's
        for size, rss in mappings:
            assert size >= 2 * 1024 and rss == size, mappings  # two 1 MiB slots, all faulted in


def test_threads_per_rank_share_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert threads_per_rank(1) == cores
    assert threads_per_rank(cores) == 1
    assert threads_per_rank(4 * cores) == 1  # never none
    assert threads_per_rank(2) == max(1, cores // 2)
