"""A rank of the multihost collective check: every collective, checked, at each size given.

Usage: ``collectives.py N [N...]`` (element counts), with ``env://`` variables set. Prints
``IDENTITY <host identity> <transport class> shm_peers=<ranks or -> arena=<bool>`` after
joining, ``CHAIN10 <seconds>`` (the time of 10 small allreduces in a row: each waits for messages
sent after the previous one, so at least about 5 one-way delays), one ``PASS <op> <n>`` line per
check, then ``DONE``; a wrong result raises (exit code 1)
with both values.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

import torch

import pyc10d as dist
from pyc10d.transport.shm.setup import host_identity


def check(name: str, n: int, got: torch.Tensor, want: torch.Tensor) -> None:
    """Raise unless ``got`` equals ``want`` exactly; else print ``PASS name n``."""
    if not torch.equal(got, want):
        bad = (got != want).nonzero()[:5].flatten().tolist()
        raise AssertionError(f"{name} n={n}: wrong at {bad}: got {got[:8]}, want {want[:8]}")
    print(f"PASS {name} {n}", flush=True)


def value(rank: int, n: int, salt: int = 0) -> torch.Tensor:
    """Rank ``rank``'s contribution: distinct per rank, element and salt, exact in float32."""
    return torch.arange(n, dtype=torch.float32) % 1000 + 1000 * rank + 7 * salt


def reductions(rank: int, world: int, n: int) -> None:
    """all_reduce (SUM, MAX), reduce_scatter."""
    t = value(rank, n)
    dist.all_reduce(t)
    check("all_reduce", n, t, sum(value(r, n) for r in range(world)))
    t = value(rank, n)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    check("all_reduce_max", n, t, value(world - 1, n))
    out = torch.empty(n)
    dist.reduce_scatter(out, [value(rank, n, salt=d) for d in range(world)])
    check("reduce_scatter", n, out, sum(value(r, n, salt=rank) for r in range(world)))


def copies(rank: int, world: int, n: int) -> None:
    """broadcast, all_gather, all_to_all, gather, scatter."""
    t = value(rank, n)
    dist.broadcast(t, src=1)
    check("broadcast", n, t, value(1, n))
    outs = [torch.empty(n) for _ in range(world)]
    dist.all_gather(outs, value(rank, n))
    check("all_gather", n, torch.cat(outs), torch.cat([value(r, n) for r in range(world)]))
    outs = [torch.empty(n) for _ in range(world)]
    dist.all_to_all(outs, [value(rank, n, salt=d) for d in range(world)])
    want = [value(r, n, salt=rank) for r in range(world)]
    check("all_to_all", n, torch.cat(outs), torch.cat(want))
    outs = [torch.empty(n) for _ in range(world)] if rank == 2 else None
    dist.gather(value(rank, n), outs, dst=2)
    if outs is not None:
        check("gather", n, torch.cat(outs), torch.cat([value(r, n) for r in range(world)]))
    out = torch.empty(n)
    dist.scatter(out, [value(0, n, salt=d) for d in range(world)] if rank == 0 else None, src=0)
    check("scatter", n, out, value(0, n, salt=rank))


def point_to_point(rank: int, world: int, n: int) -> None:
    """A ring of isend/irecv, then a blocking send/recv between ranks 0 and 2."""
    out = torch.empty(n)
    works = [dist.isend(value(rank, n), (rank + 1) % world), dist.irecv(out, (rank - 1) % world)]
    for w in works:
        w.wait()
    check("isend_irecv", n, out, value((rank - 1) % world, n))
    if rank == 0:
        dist.send(value(0, n, salt=5), dst=2)
    elif rank == 2:
        out = torch.empty(n)
        dist.recv(out, src=0)
        check("send_recv", n, out, value(0, n, salt=5))


def main(sizes: list[int]) -> None:
    """Join, report the host identity and transport, run every check at every size."""
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    pg = dist.group.WORLD
    transport = type(pg._transport).__name__
    shm = ",".join(map(str, getattr(pg._transport, "shm_peers", ()))) or "-"
    arena = pg._arena is not None
    print(f"IDENTITY {host_identity()} {transport} shm_peers={shm} arena={arena}", flush=True)
    dist.barrier()
    start = time.monotonic()
    for _ in range(10):
        dist.all_reduce(torch.ones(4))
    print(f"CHAIN10 {time.monotonic() - start:.4f}", flush=True)
    for n in sizes:
        reductions(rank, world, n)
        copies(rank, world, n)
        point_to_point(rank, world, n)
        dist.barrier()
        print(f"PASS barrier {n}", flush=True)
    dist.destroy_process_group()
    print("DONE", flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]])
