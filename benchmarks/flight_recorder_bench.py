"""The flight recorder's cost per operation: back-to-back 4-byte ``pyc10d.all_reduce`` calls.

Three settings:

* ``off``: ``TORCH_FR_BUFFER_SIZE=0``, nothing recorded;
* ``on``: torch's default (``TORCH_FR_BUFFER_SIZE=2000``, Python stacks recorded, as torch's
  recorder gathers them by default);
* ``no-stacks``: ``TORCH_FR_BUFFER_SIZE=2000`` and ``PYC10D_FR_STACK=0``.

End to end (the budget: ``on`` at most 3 us per operation above ``off``): every round runs one
fresh world-2 job (pyc10d's test harness, new processes) of each setting, the order rotating
between rounds. A rank calls ``pyc10d.all_reduce`` on one float32 ``--iters`` times after a
warm-up, timed in ``--blocks`` blocks; a job's time per operation is its slower rank's median
block, and its fast-block time its slower rank's 10th-percentile block (the blocks another
process on the machine disturbed least). Reported: the median over rounds of each setting, and
the median over rounds of the per-round difference from ``off`` (same round, so the machine's
load is alike), in microseconds per operation; and the CPU time of the calling thread per
operation (the ranks' mean), which waiting for the peer does not count.

In one process (steadier on a busy machine): the same ``pyc10d.all_reduce`` on a world-1 group,
the settings alternating every block of 200 calls (``--local-rounds`` rounds), the 10th
percentile of each setting's blocks and its difference from ``off``.

    python benchmarks/flight_recorder_bench.py [--rounds 7] [--iters 20000] [--blocks 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

BUFFER_ON = 2000

SETTINGS = {
    "off": {"TORCH_FR_BUFFER_SIZE": "0", "PYC10D_FR_STACK": "1"},
    "on": {"TORCH_FR_BUFFER_SIZE": str(BUFFER_ON), "PYC10D_FR_STACK": "1"},
    "no-stacks": {"TORCH_FR_BUFFER_SIZE": str(BUFFER_ON), "PYC10D_FR_STACK": "0"},
}
"""Each setting's environment."""


def _percentile(values: list[float], fraction: float) -> float:
    """The value ``fraction`` of the way up the sorted ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def _rank_loop(ctx, iters: int, warmup: int, blocks: int) -> tuple[list[float], float, int]:
    """Seconds per allreduce of each block on this rank, the calling thread's CPU seconds per
    allreduce, and the recorder's buffer size."""
    import pyc10d as dist

    dist.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    tensor = torch.ones(1)
    for _ in range(warmup):
        dist.all_reduce(tensor)
    dist.barrier()
    per_block = max(1, iters // blocks)
    walls = []
    cpu = time.thread_time()
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(per_block):
            dist.all_reduce(tensor)
        walls.append((time.perf_counter() - start) / per_block)
    cpu = (time.thread_time() - cpu) / (per_block * blocks)
    dist.barrier()
    size = dist.flight_recorder.buffer_size()
    dist.destroy_process_group()
    return walls, cpu, size


def _job(setting: str, iters: int, warmup: int, blocks: int) -> tuple[float, float, float]:
    """(median block, 10th-percentile block, calling thread's CPU) microseconds per allreduce
    of a fresh world-2 job: its slower rank's blocks, its ranks' mean CPU."""
    from pyc10d.testing import spawn

    env = SETTINGS[setting]
    per_rank = spawn(_rank_loop, 2, args=(iters, warmup, blocks), timeout=600, env=env)
    sizes = {size for _, _, size in per_rank}
    if sizes != {int(env["TORCH_FR_BUFFER_SIZE"])}:
        raise RuntimeError(f"{setting}: the ranks recorded with buffer sizes {sizes}")
    median = max(statistics.median(walls) for walls, _, _ in per_rank) * 1e6
    fast = max(_percentile(walls, 0.1) for walls, _, _ in per_rank) * 1e6
    cpu = statistics.mean(cpu for _, cpu, _ in per_rank) * 1e6
    return median, fast, cpu


def _summary(runs: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """Per setting: (median over rounds, median of the per-round differences from off)."""
    base = runs["off"]
    return {
        name: (
            statistics.median(values),
            statistics.median(b - a for a, b in zip(base, values, strict=True)),
        )
        for name, values in runs.items()
    }


def end_to_end(rounds: int, iters: int, warmup: int, blocks: int) -> dict[str, dict]:
    """``{"median": ..., "fast": ..., "cpu": ...}``, each :func:`_summary` of the rounds, and
    ``"rounds"``: the median block of every job, by setting."""
    names = list(SETTINGS)
    runs: dict[str, dict[str, list[float]]] = {
        kind: {name: [] for name in names} for kind in ("median", "fast", "cpu")
    }
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            for kind, value in zip(runs, _job(name, iters, warmup, blocks), strict=True):
                runs[kind][name].append(value)
    result: dict[str, dict] = {kind: _summary(values) for kind, values in runs.items()}
    result["rounds"] = runs["median"]
    return result


def in_process(rounds: int, block: int = 200) -> dict[str, tuple[float, float]]:
    """Per setting: (10th-percentile us per allreduce of its blocks, minus off's) on a
    world-1 group of this process, the settings alternating every block."""
    import pyc10d as dist
    from pyc10d.process_group import flight_recorder
    from pyc10d.store import HashStore

    saved = os.environ.get(flight_recorder.STACK_VAR)
    dist.init_process_group(store=HashStore(), rank=0, world_size=1)
    tensor = torch.ones(1)
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    try:
        for round_index in range(rounds):
            names = list(SETTINGS)
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                env = SETTINGS[name]
                os.environ[flight_recorder.STACK_VAR] = env[flight_recorder.STACK_VAR]
                flight_recorder.configure(int(env["TORCH_FR_BUFFER_SIZE"]))
                for _ in range(block // 2):  # warm up the setting (and fill part of the ring)
                    dist.all_reduce(tensor)
                start = time.perf_counter()
                for _ in range(block):
                    dist.all_reduce(tensor)
                times[name].append((time.perf_counter() - start) / block * 1e6)
    finally:
        dist.destroy_process_group()
        if saved is None:
            os.environ.pop(flight_recorder.STACK_VAR, None)
        else:
            os.environ[flight_recorder.STACK_VAR] = saved
        flight_recorder.configure()
    fast = {name: _percentile(values, 0.1) for name, values in times.items()}
    return {name: (value, value - fast["off"]) for name, value in fast.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=2500, help="fills the default ring")
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--local-rounds", type=int, default=300)
    parser.add_argument("--skip-local", action="store_true", help="only the world-2 jobs")
    args = parser.parse_args()
    print("| what | setting | us/op | minus off (us/op) |")
    print("|---|---|---:|---:|")
    if not args.skip_local:
        what = "world-1 all_reduce in process, alternating blocks, 10th percentile"
        for name, (value, diff) in in_process(args.local_rounds).items():
            print(f"| {what} | {name} | {value:.2f} | {diff:.2f} |")
    job = end_to_end(args.rounds, args.iters, args.warmup, args.blocks)
    what = f"world-2 4-byte all_reduce, fresh jobs, median of {args.rounds} rounds"
    labels = (
        ("median", "median block"),
        ("fast", "10th-percentile block"),
        ("cpu", "calling thread's CPU"),
    )
    for kind, label in labels:
        for name, (value, diff) in job[kind].items():
            print(f"| {what}, {label} | {name} | {value:.2f} | {diff:.2f} |")
    for name, values in job["rounds"].items():
        print(f"median blocks {name}: " + " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()
