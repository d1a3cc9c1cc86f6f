"""Rendezvous N processes through pyc10d and share a key-value store (a demo of layer 1).

Each process joins through ``tcp://`` (rank 0 hosts the TCPStore), announces itself, waits for
everyone, then rank 0 measures store round trips and prints what the group agreed on.

    python examples/store_demo.py --nproc 3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import time
from datetime import timedelta

import pyc10d


def worker(url: str, rank: int, world_size: int) -> None:
    store, rank, world_size = next(
        pyc10d.rendezvous(url, rank, world_size, timeout=timedelta(seconds=30))
    )
    store.set(f"hello/{rank}", f"rank {rank} is pid {os.getpid()}")
    store.barrier("everyone-here", world_size, timedelta(seconds=30))
    if rank == 0:
        for line in store.multi_get([f"hello/{r}" for r in range(world_size)]):
            print(" ", line.decode())
        rounds = 2000
        start = time.perf_counter()
        for _ in range(rounds):
            store.add("round-trips", 1)
        elapsed = time.perf_counter() - start
        print(f"  {rounds} store round trips: {elapsed / rounds * 1e6:.0f} µs each")
        store.set("done", "1")
    store.wait(["done"], timedelta(seconds=30))
    # rank 0's process hosts the store: it leaves only after every other rank's last request
    if rank == 0:
        store.wait([f"leaving/{r}" for r in range(1, world_size)], timedelta(seconds=30))
    else:
        store.set(f"leaving/{rank}", b"1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=3, help="number of processes")
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    print(f"pyc10d {pyc10d.__version__}: {args.nproc} processes meeting at {url}")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(url, r, args.nproc)) for r in range(args.nproc)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    failed = [r for r, p in enumerate(procs) if p.exitcode != 0]
    for p in procs:
        if p.is_alive():
            p.kill()
    if failed:
        raise SystemExit(f"ranks {failed} failed")
    print("all ranks finished")


if __name__ == "__main__":
    main()
