"""Stores shared by several processes: add hammering, compare_set races, waits (rendezvous across
processes: tests/rendezvous/test_rendezvous_multiprocess.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

import pyc10d
from pyc10d.testing import spawn, world_sizes

ADDS_PER_RANK = 300


def _store_for(ctx, kind: str):
    if kind == "tcp":
        return ctx.store
    return pyc10d.FileStore(ctx.init_file, ctx.world_size)


def hammer_add(ctx, kind: str) -> list[int]:
    store = _store_for(ctx, kind)
    store.barrier("start", ctx.world_size, timedelta(seconds=30))
    return [store.add("counter", 1) for _ in range(ADDS_PER_RANK)]


@pytest.mark.parametrize("kind", ["tcp", "file"])
def test_four_processes_hammering_add(kind):
    results = spawn(hammer_add, 4, args=(kind,), timeout=60)
    seen = sorted(v for rank_values in results for v in rank_values)
    assert seen == list(range(1, 4 * ADDS_PER_RANK + 1))  # every increment counted exactly once


def race_compare_set(ctx, kind: str) -> tuple[bool, bytes]:
    store = _store_for(ctx, kind)
    store.barrier("start", ctx.world_size, timedelta(seconds=30))
    mine = f"rank{ctx.rank}".encode()
    won = store.compare_set("lock", "", mine) == mine
    store.barrier("done", ctx.world_size, timedelta(seconds=30))
    return won, store.get("lock")


@pytest.mark.parametrize("kind", ["tcp", "file"])
def test_compare_set_race_has_one_winner(kind):
    results = spawn(race_compare_set, 4, args=(kind,), timeout=60)
    winners = [rank for rank, (won, _) in enumerate(results) if won]
    assert len(winners) == 1
    assert {holder for _, holder in results} == {f"rank{winners[0]}".encode()}


def ring_wait(ctx) -> bytes:
    store = ctx.store
    store.set(f"ready/{ctx.rank}", str(ctx.rank))
    left = (ctx.rank - 1) % ctx.world_size
    store.wait([f"ready/{left}"], timedelta(seconds=30))
    return store.get(f"ready/{left}")


@world_sizes(2, 3)
def test_wait_across_processes(world_size):
    results = spawn(ring_wait, world_size, timeout=60)
    assert results == [str((r - 1) % world_size).encode() for r in range(world_size)]


def wait_times_out(ctx) -> float:
    import time

    start = time.monotonic()
    try:
        ctx.store.wait([f"never/{ctx.rank}"], timedelta(milliseconds=300))
    except pyc10d.DistStoreError as exc:
        assert f"never/{ctx.rank}" in str(exc) and "timed out" in str(exc)
        return time.monotonic() - start
    raise AssertionError("wait did not time out")


def test_wait_timeout_in_every_rank():
    assert all(0.25 <= elapsed < 5 for elapsed in spawn(wait_times_out, 3, timeout=60))
