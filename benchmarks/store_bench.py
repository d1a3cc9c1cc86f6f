"""TCPStore throughput: pyc10d vs torch.distributed, each in its own processes, in one run.

For 1 and 8 client processes, measures set / get / add operations per second against a fresh
master store, and prints a markdown table with the pyc10d/torch ratio. Each library has its own
processes: one hosting its masters (a new master store, hence a new server, per measurement)
and its own client processes, which import only that library. Rounds alternate the libraries
(and which one goes first) so machine noise hits both alike; the median round is kept.

The rate of one measurement is all the clients' operations divided by the time from the first
client's start to the last client's end (sets are not acknowledged: each client ends with a
``get``, so the time includes the server applying every set it sent).

    python benchmarks/store_bench.py [--seconds 1.0] [--rounds 5] [--clients 1 8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
import warnings
from datetime import timedelta

OPS = ("set", "get", "add")
IMPLS = ("pyc10d", "torch")
VALUE = b"x" * 32


def _make_store(impl: str, port: int, is_master: bool):
    timeout = timedelta(seconds=60)
    if impl == "pyc10d":
        import pyc10d

        return pyc10d.TCPStore("127.0.0.1", port, None, is_master, timeout, wait_for_workers=False)
    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", port, None, is_master, timeout, wait_for_workers=False)


def _import(impl: str) -> None:
    """Import ``impl``'s store (and nothing of the other library)."""
    if impl == "pyc10d":
        import pyc10d  # noqa: F401
    else:
        import torch.distributed  # noqa: F401


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


def _client(impl: str, index: int, tasks, results) -> None:
    """A client process of one library: runs the measurements it is handed."""
    warnings.filterwarnings("ignore")
    _import(impl)  # once, outside the timed region
    while (task := tasks.get()) is not None:
        port, op, clients, seconds, run_id = task
        store = _make_store(impl, port, False)
        # all clients start together: count in, then wait for the last one
        if store.add(f"{run_id}/ready", 1) == clients:
            store.set(f"{run_id}/go", b"1")
        store.wait([f"{run_id}/go"])
        start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        count = _run_op(store, op, index, seconds)
        results.put((count, start, time.perf_counter()))
        del store


def _master(impl: str, commands, ports) -> None:
    """The process hosting one library's masters: a fresh master store per measurement."""
    warnings.filterwarnings("ignore")
    master = None
    while (command := commands.get()) is not None:
        if command == "start":
            master = _make_store(impl, 0, True)
            ports.put(master.port)
        else:
            del master
            master = None
            ports.put(0)


class _Library:
    """One library's processes: a master host and a pool of client processes."""

    def __init__(self, ctx, impl: str, clients: int) -> None:
        self.impl = impl
        self.commands, self.ports = ctx.Queue(), ctx.Queue()
        self.tasks, self.results = ctx.Queue(), ctx.Queue()
        self.processes = [ctx.Process(target=_master, args=(impl, self.commands, self.ports))]
        self.processes += [
            ctx.Process(target=_client, args=(impl, i, self.tasks, self.results))
            for i in range(clients)
        ]
        for process in self.processes:
            process.daemon = True
            process.start()

    def measure(self, op: str, clients: int, seconds: float, run_id: str) -> float:
        """Aggregate ops/s of ``clients`` processes running ``op`` against a fresh master."""
        self.commands.put("start")
        port = self.ports.get(timeout=120)
        for _ in range(clients):
            self.tasks.put((port, op, clients, seconds, run_id))
        samples = [self.results.get(timeout=120) for _ in range(clients)]
        self.commands.put("stop")
        self.ports.get(timeout=120)
        first = min(start for _, start, _ in samples)
        last = max(end for _, _, end in samples)
        return sum(count for count, _, _ in samples) / (last - first)

    def close(self) -> None:
        """Stop every process of this library."""
        self.commands.put(None)
        for _ in self.processes[1:]:
            self.tasks.put(None)
        for process in self.processes:
            process.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="duration of one measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median kept)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    libraries = {impl: _Library(ctx, impl, max(args.clients)) for impl in IMPLS}
    samples: dict[tuple[int, str, str], list[float]] = {}
    run = 0
    try:
        for round_index in range(args.rounds):
            order = IMPLS if round_index % 2 == 0 else IMPLS[::-1]
            for clients in args.clients:
                for op in OPS:
                    for impl in order:
                        run += 1
                        rate = libraries[impl].measure(op, clients, args.seconds, f"run{run}")
                        samples.setdefault((clients, op, impl), []).append(rate)
    finally:
        for library in libraries.values():
            library.close()

    print(
        f"TCPStore ops/s (median of {args.rounds} alternating rounds, {args.seconds:g} s each; "
        "each library in its own processes)"
    )
    print()
    print("| clients | op | pyc10d ops/s | torch ops/s | pyc10d / torch | per round |")
    print("|---:|---|---:|---:|---:|---|")
    for clients in args.clients:
        for op in OPS:
            ours, theirs = samples[(clients, op, "pyc10d")], samples[(clients, op, "torch")]
            ratio = statistics.median(ours) / statistics.median(theirs)
            rounds = " ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=True))
            print(
                f"| {clients} | {op} | {statistics.median(ours):,.0f} | "
                f"{statistics.median(theirs):,.0f} | {ratio:.2f}x | {rounds} |"
            )


if __name__ == "__main__":
    main()
