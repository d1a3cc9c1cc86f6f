"""abort() and shutdown() of a group release everything it holds, and the API starts afresh.

``abort()`` (and ``_abort_process_group``) fails this rank's pending operations at once, with
an error saying the group was aborted, without waiting for the peers: an unmatched ``irecv``
and an ``all_reduce`` that a peer never joins end long before their timeout (an hour here; the
run's own timeout is a minute). ``shutdown()`` (``destroy_process_group``) lets issued
collectives finish first. After either, at world sizes 2 and 3 and on the ``auto`` (shared
memory) and ``tcp`` transports: no pyc10d thread is alive, no socket or memfd the group opened
is left, nothing of it is in /dev/shm, and ``init_process_group`` works again.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
import torch

import pyc10d as dist
import pyc10d.distributed_c10d as c10d
from pyc10d.store import PrefixStore
from pyc10d.testing import spawn, world_sizes
from pyc10d.transport.factory import ENV

TIMEOUT = 60  # the whole run; every operation below has an hour
OP_TIMEOUT = timedelta(hours=1)
ABORTED = "the process group was aborted"  # the pending operations' error names the abort
ABORTED_OR_LEFT = ""  # a later rank's: its abort's, or one of a peer that aborted first


def _fds() -> dict[str, int]:
    """This process's open sockets and memfds, counted from /proc/self/fd."""
    counts = {"socket": 0, "memfd": 0}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own fd)
            continue
        for kind in counts:
            if target.startswith(f"{kind}:") or target.startswith(f"/{kind}:"):
                counts[kind] += 1
    return counts


def _mapped_memfds() -> int:
    with open("/proc/self/maps") as maps:
        return sum("memfd:" in line for line in maps)


def _shm_entries() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if "pyc10d" in name}


def snapshot() -> dict:
    """What a group can leave behind: threads, sockets, memfds (open, mapped), /dev/shm."""
    return {
        "threads": sorted(t.name for t in threading.enumerate() if t.is_alive()),
        "fds": _fds(),
        "maps": _mapped_memfds(),
        "shm": sorted(_shm_entries()),
    }


def _init(ctx, name: str) -> None:
    dist.init_process_group(
        store=PrefixStore(name, ctx.store),
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=OP_TIMEOUT,
    )


def _still_works(ctx, name: str) -> None:
    """A new default group: an all_reduce across every rank, then destroyed."""
    _init(ctx, name)
    t = torch.tensor([ctx.rank + 1.0])
    dist.all_reduce(t)
    assert t.item() == ctx.world_size * (ctx.world_size + 1) / 2
    dist.destroy_process_group()


def _pending(ctx) -> list:
    """Operations this rank cannot finish: an irecv nobody sends, and (all but the last rank)
    an all_reduce the last rank never joins."""
    works = [dist.irecv(torch.zeros(3), src=(ctx.rank + 1) % ctx.world_size, tag=77)]
    if ctx.rank != ctx.world_size - 1:
        works.append(dist.all_reduce(torch.ones(4), async_op=True))
    return works


def abort_pending(ctx, how: str) -> dict:
    """The ranks abort in turn, each with its operations pending: rank 0's fail with its own
    abort's error; a later rank's may have failed already because an earlier one left."""
    _ = ctx.store  # the harness's store connection is not the group's: open it first
    before = snapshot()
    _init(ctx, "first")
    works = _pending(ctx)
    ctx.store.wait([f"turn{ctx.rank}"] if ctx.rank else [])
    if how == "api":
        c10d._abort_process_group()
        assert not dist.is_initialized()
    else:
        dist.group.WORLD.abort()
    for work in works:
        with pytest.raises(RuntimeError, match=ABORTED if ctx.rank == 0 else ABORTED_OR_LEFT):
            work.wait()
    if how == "method":
        dist.destroy_process_group()  # works after abort()
    ctx.store.set(f"turn{ctx.rank + 1}", "go")
    ctx.store.wait([f"turn{ctx.world_size}"])  # every rank has aborted
    after = snapshot()
    _still_works(ctx, "second")
    return {"before": before, "after": after, "end": snapshot()}


def shutdown_drains(ctx) -> dict:
    _ = ctx.store
    before = snapshot()
    _init(ctx, "first")
    t = torch.tensor([ctx.rank + 1.0])
    work = dist.all_reduce(t, async_op=True)
    dist.destroy_process_group()  # shutdown(): the issued all_reduce finishes first
    assert work.is_completed() and t.item() == ctx.world_size * (ctx.world_size + 1) / 2
    after = snapshot()
    _still_works(ctx, "second")
    return {"before": before, "after": after, "end": snapshot()}


def _check(results: list[dict]) -> None:
    for rank, result in enumerate(results):
        for moment in ("after", "end"):
            assert result[moment] == result["before"], (rank, moment, result)


TRANSPORTS = pytest.mark.parametrize("transport", ["auto", "tcp"])


@TRANSPORTS
@pytest.mark.parametrize("how", ["api", "method"])
@world_sizes(2, 3)
def test_abort_fails_pending_and_releases(world_size, how, transport):
    before = _shm_entries()
    _check(spawn(abort_pending, world_size, args=(how,), timeout=TIMEOUT, env={ENV: transport}))
    assert _shm_entries() <= before


@TRANSPORTS
@world_sizes(2, 3)
def test_shutdown_drains_and_releases(world_size, transport):
    before = _shm_entries()
    _check(spawn(shutdown_drains, world_size, timeout=TIMEOUT, env={ENV: transport}))
    assert _shm_entries() <= before
