"""Collectives: pyc10d vs torch.distributed Gloo, side by side in the same processes and run.

For each world size the ranks are started once (pyc10d's test harness) and hold both a pyc10d
ProcessGroup and a torch ProcessGroupGloo. Every (collective, size) cell runs each backend back
to back, alternating which goes first over the repetitions, and keeps the median; the time of an
operation is the slowest rank's. Prints a markdown table (latency, bus bandwidth, speedup) and
saves a PNG of the speedups when matplotlib is installed (the ``bench`` extra).

    python benchmarks/collectives_bench.py [--worlds 2 4] [--max-bytes 67108864] [--plot out.png]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import timedelta

import torch

COLLECTIVES = ("allreduce", "broadcast", "allgather", "reduce_scatter", "alltoall")
DEFAULT_SIZES = [4, 64, 1024, 16 * 1024, 256 * 1024, 4 * 1024 * 1024, 64 * 1024 * 1024]


def bus_factor(collective: str, world: int) -> float:
    """nccl-tests' bus-bandwidth factor: bus GB/s = size / time * factor."""
    if collective == "allreduce":
        return 2 * (world - 1) / world
    if collective == "broadcast":
        return 1.0
    return (world - 1) / world


def _options(pg, name: str):
    """A fresh ``name`` options object of ``pg``'s backend, marked as waited for at once.

    ``asyncOp = False`` is what ``dist.all_reduce(t)`` (``async_op=False``) sets in both
    torch.distributed and pyc10d; every timed call here waits for its Work right away.
    """
    import pyc10d

    if isinstance(pg, pyc10d.ProcessGroup):
        module = pyc10d
    else:
        import torch.distributed.distributed_c10d as module
    options = getattr(module, name)()
    options.asyncOp = False
    return options


def _operation(collective: str, pg, nbytes: int, world: int, rank: int):
    """A zero-argument callable running one ``collective`` of ``nbytes`` on ``pg``."""
    numel = max(world, nbytes // 4)
    numel -= numel % world
    if collective == "allreduce":
        tensor = torch.ones(numel)
        opts = _options(pg, "AllreduceOptions")
        return lambda: pg.allreduce([tensor], opts).wait()
    if collective == "broadcast":
        tensor = torch.ones(numel)
        opts = _options(pg, "BroadcastOptions")
        opts.rootRank = 0
        return lambda: pg.broadcast([tensor], opts).wait()
    if collective == "allgather":
        part = torch.ones(numel // world)
        outputs = [torch.empty_like(part) for _ in range(world)]
        opts = _options(pg, "AllgatherOptions")
        return lambda: pg.allgather([outputs], [part], opts).wait()
    if collective == "reduce_scatter":
        inputs = [torch.ones(numel // world) for _ in range(world)]
        output = torch.empty(numel // world)
        opts = _options(pg, "ReduceScatterOptions")
        return lambda: pg.reduce_scatter([output], [inputs], opts).wait()
    source, target = torch.ones(numel), torch.empty(numel)
    opts = _options(pg, "AllToAllOptions")
    return lambda: pg.alltoall_base(target, source, [], [], opts).wait()


def _iterations(nbytes: int) -> int:
    return max(3, min(200, int(4e7 / max(nbytes, 1))))


def run_rank(ctx, collectives: list[str], sizes: list[int], repeats: int) -> dict:
    """One rank: time every cell on both backends; return {(collective, size, backend): s}."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch.distributed as tdist

    import pyc10d

    world, rank = ctx.world_size, ctx.rank
    options = pyc10d.ProcessGroup.Options(timeout=timedelta(seconds=120))
    ours = pyc10d.ProcessGroup(ctx.store, rank, world, options)
    gloo = tdist.ProcessGroupGloo(
        tdist.FileStore(ctx.init_file, world), rank, world, timedelta(seconds=120)
    )
    backends = {"pyc10d": ours, "gloo": gloo}
    slowest = torch.zeros(1, dtype=torch.float64)
    results: dict = {}
    for collective in collectives:
        for nbytes in sizes:
            ops = {
                name: _operation(collective, pg, nbytes, world, rank)
                for name, pg in backends.items()
            }
            iterations = _iterations(nbytes)
            samples: dict[str, list[float]] = {name: [] for name in backends}
            for repeat in range(repeats):
                order = list(backends) if repeat % 2 == 0 else list(reversed(backends))
                for name in order:
                    ops[name]()  # warm up this cell's buffers and connections
                    gloo.barrier().wait()
                    start = time.perf_counter()
                    for _ in range(iterations):
                        ops[name]()
                    slowest[0] = (time.perf_counter() - start) / iterations
                    opts = tdist.AllreduceOptions()
                    opts.reduceOp = tdist.ReduceOp.MAX
                    gloo.allreduce([slowest], opts).wait()
                    samples[name].append(slowest.item())
            for name, values in samples.items():
                results[(collective, nbytes, name)] = statistics.median(values)
    ours.shutdown()
    return results


def human(nbytes: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--collectives", nargs="+", default=list(COLLECTIVES))
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_SIZES[-1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", default="benchmarks/results/collectives.png")
    args = parser.parse_args()

    from pyc10d.testing import spawn

    sizes = [s for s in DEFAULT_SIZES if s <= args.max_bytes]
    table = []
    for world in args.worlds:
        results = spawn(
            run_rank, world, args=(args.collectives, sizes, args.repeats), timeout=3000
        )[0]
        for collective in args.collectives:
            for nbytes in sizes:
                ours = results[(collective, nbytes, "pyc10d")]
                gloo = results[(collective, nbytes, "gloo")]
                factor = bus_factor(collective, world)
                table.append((collective, world, nbytes, ours, gloo, factor))
    print(
        "| collective | world | size | pyc10d µs | gloo µs | pyc10d bus GB/s | gloo bus GB/s "
        "| speedup |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for collective, world, nbytes, ours, gloo, factor in table:
        print(
            f"| {collective} | {world} | {human(nbytes)} | {ours * 1e6:,.0f} | "
            f"{gloo * 1e6:,.0f} | {nbytes / ours * factor / 1e9:.2f} | "
            f"{nbytes / gloo * factor / 1e9:.2f} | {gloo / ours:.2f}x |"
        )
    _plot(table, args.plot)


def _plot(table: list, path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        print("(matplotlib not installed: no plot; pip install -e '.[bench]')")
        return
    matplotlib.use("Agg")
    from pathlib import Path

    import matplotlib.pyplot as plt

    collectives = sorted({row[0] for row in table}, key=COLLECTIVES.index)
    fig, axes = plt.subplots(
        1, len(collectives), figsize=(4 * len(collectives), 3.5), squeeze=False
    )
    for axis, collective in zip(axes[0], collectives, strict=True):
        for world in sorted({row[1] for row in table}):
            rows = [r for r in table if r[0] == collective and r[1] == world]
            axis.plot(
                [r[2] for r in rows],
                [r[4] / r[3] for r in rows],
                marker="o",
                label=f"world {world}",
            )
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xscale("log", base=2)
        axis.set_title(collective)
        axis.set_xlabel("bytes")
        axis.set_ylabel("speedup vs Gloo (x)")
        axis.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"plot saved to {path}")


if __name__ == "__main__":
    main()
