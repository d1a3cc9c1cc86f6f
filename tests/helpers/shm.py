"""Helpers shared by the shared-memory arena tests (transport, collectives and process group).

``run`` spawns the ranks with the default transport selection (the arena) and checks that no
``pyc10d`` entry is left in ``/dev/shm`` after the run, whatever happened in the ranks.
"""

from __future__ import annotations

import os
import time

import torch

from pyc10d.core.timeouts import Deadline
from pyc10d.store import PrefixStore
from pyc10d.testing import spawn
from pyc10d.transport.factory import ENV
from pyc10d.transport.shm.arena import ShmArena

SPAWN_TIMEOUT = 40  # every body here takes a few seconds at most; a hang fails within this
OP_SECONDS = 20.0  # the deadline of each arena collective that is expected to complete
MiB = 1024 * 1024


def shm_entries() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if "pyc10d" in n}


def shm_leftovers(before: set[str]) -> list[str]:
    """``pyc10d`` entries in /dev/shm not in ``before`` that stay (brief setups excepted)."""
    new = shm_entries() - before
    if new:
        time.sleep(0.5)
        new &= shm_entries()
    return sorted(new)


def run(fn, world_size: int, *args) -> list:
    """Spawn ``fn`` (default transport selection: the arena) and check that no segment is left
    behind in /dev/shm, whatever happened in the ranks."""
    before = shm_entries()
    try:
        return spawn(fn, world_size, args=args, timeout=SPAWN_TIMEOUT, env={ENV: "auto"})
    finally:
        assert shm_leftovers(before) == []


def arena_of(ctx, slot_bytes: int, prefix: str = "t", timeout: float = 30) -> ShmArena:
    return ShmArena(
        PrefixStore(prefix, ctx.store),
        ctx.rank,
        ctx.world_size,
        Deadline(timeout),
        slot_bytes=slot_bytes,
    )


def same(actual: torch.Tensor, expected: torch.Tensor, what) -> None:
    """Bit-identical (dtype, shape and bytes), NaNs included."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    a = actual.contiguous().view(-1).view(torch.uint8)
    e = expected.contiguous().view(-1).view(torch.uint8)
    if not torch.equal(a, e):
        bad = (actual.reshape(-1) != expected.reshape(-1)).nonzero()[:5].view(-1).tolist()
        raise AssertionError(f"{what}: differs at {bad} (of {actual.numel()})")
