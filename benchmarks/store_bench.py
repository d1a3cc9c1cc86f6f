"""TCPStore throughput: pyc10d vs torch.distributed, side by side in one run.

For 1 and 8 client processes, measures set / get / add operations per second (summed over the
clients) against a master store hosted in this process, alternating implementations round by
round so machine noise hits both alike. Prints a markdown table with the pyc10d/torch ratio.

    python benchmarks/store_bench.py [--seconds 1.0] [--rounds 3] [--clients 1 8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
import warnings
from datetime import timedelta

OPS = ("set", "get", "add")
VALUE = b"x" * 32


def _make_store(impl: str, port: int, is_master: bool, world_size: int | None = None):
    timeout = timedelta(seconds=60)
    if impl == "pyc10d":
        import pyc10d

        return pyc10d.TCPStore(
            "127.0.0.1", port, world_size, is_master, timeout, wait_for_workers=False
        )
    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", port, world_size, is_master, timeout, wait_for_workers=False)


def _run_op(store, op: str, index: int, seconds: float) -> int:
    """Run ``op`` back to back for ``seconds``; return how many completed."""
    key = f"bench/{index}"
    count = 0
    deadline = time.perf_counter() + seconds
    if op == "set":
        while time.perf_counter() < deadline:
            for _ in range(64):
                store.set(key, VALUE)
            count += 64
        store.get(key)  # sets are not acknowledged: make sure the server has applied them all
    elif op == "get":
        store.set(key, VALUE)
        while time.perf_counter() < deadline:
            for _ in range(16):
                store.get(key)
            count += 16
    else:
        while time.perf_counter() < deadline:
            for _ in range(16):
                store.add("bench/counter", 1)
            count += 16
    return count


def _worker(index: int, tasks, results) -> None:
    warnings.filterwarnings("ignore")
    import torch.distributed  # noqa: F401 - import once, outside the timed region

    import pyc10d  # noqa: F401

    while (task := tasks.get()) is not None:
        impl, port, op, clients, seconds, run_id = task
        store = _make_store(impl, port, False)
        # all clients start together: count in, then wait for the last one
        if store.add(f"{run_id}/ready", 1) == clients:
            store.set(f"{run_id}/go", b"1")
        store.wait([f"{run_id}/go"])
        start = time.perf_counter()
        count = _run_op(store, op, index, seconds)
        results.put((count, time.perf_counter() - start))
        del store


def measure(impl: str, op: str, clients: int, seconds: float, pool, run_id: str) -> float:
    """Aggregate ops/s of ``clients`` processes running ``op`` against a fresh ``impl`` master."""
    tasks, results, _ = pool
    master = _make_store(impl, 0, True)
    for _ in range(clients):
        tasks.put((impl, master.port, op, clients, seconds, run_id))
    total = 0.0
    for _ in range(clients):
        count, elapsed = results.get(timeout=120)
        total += count / elapsed
    del master
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of one measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median kept)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    workers = [
        ctx.Process(target=_worker, args=(i, tasks, results), daemon=True)
        for i in range(max(args.clients))
    ]
    for w in workers:
        w.start()
    pool = (tasks, results, workers)
    samples: dict[tuple[int, str, str], list[float]] = {}
    run = 0
    for _ in range(args.rounds):
        for clients in args.clients:
            for op in OPS:
                for impl in ("pyc10d", "torch"):
                    run += 1
                    rate = measure(impl, op, clients, args.seconds, pool, f"run{run}")
                    samples.setdefault((clients, op, impl), []).append(rate)
    for _ in workers:
        tasks.put(None)
    for w in workers:
        w.join(30)

    print(f"TCPStore ops/s (median of {args.rounds} alternating rounds, {args.seconds:g} s each)")
    print()
    print("| clients | op | pyc10d ops/s | torch ops/s | pyc10d / torch |")
    print("|---:|---|---:|---:|---:|")
    for clients in args.clients:
        for op in OPS:
            ours = statistics.median(samples[(clients, op, "pyc10d")])
            theirs = statistics.median(samples[(clients, op, "torch")])
            print(f"| {clients} | {op} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}x |")


if __name__ == "__main__":
    main()
