"""The shared-memory arena itself (``pyc10d.transport.shm.arena``): setup, its errors and its
cleanup (its collectives: tests/collectives/test_shm.py).

Rank bodies are module-level functions: the ranks of ``spawn`` import this module by name. No
``pyc10d`` entry may be left in ``/dev/shm`` after any run.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from pyc10d.core.errors import DistBackendError
from pyc10d.core.timeouts import Deadline
from pyc10d.store import HashStore
from pyc10d.testing import world_sizes
from pyc10d.transport.shm.arena import ShmArena

from tests.helpers.shm import arena_of, run, shm_entries


def missing_peer(ctx) -> str:
    rank, world = ctx.rank, ctx.world_size
    if rank == world - 1:
        return "absent"  # never builds its arena
    start = time.monotonic()
    with pytest.raises(DistBackendError) as info:
        arena_of(ctx, 4096, timeout=1)
    message = str(info.value)
    assert f"setup on rank {rank} timed out after 1000ms" in message, message
    assert f"'seg/{world - 1}'" in message and "'seg/0'" not in message, message
    assert time.monotonic() - start < 5
    ctx.store.barrier("failed", world - 1, 30)  # the other ranks' setups have failed too
    assert shm_entries() == set()
    return "failed"


@world_sizes(2, 3)
def test_arena_setup_names_missing_peers_and_cleans_up(world_size):
    want = ["failed"] * (world_size - 1) + ["absent"]
    assert run(missing_peer, world_size) == want


def slot_mismatch(ctx) -> str:
    rank = ctx.rank
    if rank == 1:  # rank 0's segment is too small for it
        with pytest.raises(DistBackendError) as info:
            arena_of(ctx, 4096, timeout=2)
        message = str(info.value)
        assert "rank 0's shared-memory segment is 4608 bytes, expected 12288" in message, message
        assert "slot size" in message, message
    else:  # both ranks compare the sizes they published before sharing any memory
        with pytest.raises(DistBackendError) as info:
            arena_of(ctx, 256, timeout=2)
        message = str(info.value)
        assert "rank 1's shared-memory segment is 12288 bytes, expected 4608" in message, message
    ctx.store.barrier("failed", 2, 30)
    assert shm_entries() == set()
    return "failed"


def test_arena_setup_rejects_different_slot_sizes():
    assert run(slot_mismatch, 2) == ["failed", "failed"]


def late_setup(ctx) -> str:
    """Rank 1's arena setup times out waiting for rank 0; rank 0 arrives after that."""
    if ctx.rank == 1:
        with pytest.raises(DistBackendError, match="'seg/0'"):
            arena_of(ctx, 4096, timeout=0.5)
        ctx.store.set("gave-up", "1")
        return "gave up"
    ctx.store.wait(["gave-up"], timedelta(seconds=30))
    with pytest.raises(DistBackendError, match="rank 1"):
        arena_of(ctx, 4096, timeout=1)
    assert shm_entries() == set()
    return "failed"


def test_late_rank_in_arena_setup_gets_a_dist_error():
    assert run(late_setup, 2) == ["failed", "gave up"]


def test_slot_bytes_must_be_a_positive_multiple_of_64():
    for bad in (0, -64, 100):
        with pytest.raises(ValueError, match="multiple of 64"):
            ShmArena(HashStore(), 0, 2, Deadline(1), slot_bytes=bad)
