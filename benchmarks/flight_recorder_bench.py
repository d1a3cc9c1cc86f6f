"""The flight recorder's cost per operation: back-to-back 4-byte allreduces, recorder off vs on.

Each round starts a fresh world-2 job (pyc10d's test harness) with ``TORCH_FR_BUFFER_SIZE=0``
(off) and another with ``TORCH_FR_BUFFER_SIZE=2000`` (torch's Gloo default), alternating which
goes first; each rank times ``--iters`` ``dist.all_reduce`` calls of one float32 after a warm-up,
and a job's time per operation is its slower rank's. Reported: the median over rounds of each
setting and of the per-round difference (on - off), in microseconds per operation.

The allreduce itself costs tens of microseconds and varies between runs, so the wall-clock
difference is noisy on a busy machine; the ranks' CPU time per operation is reported too, and
the recording path is timed alone, in this process, in thread CPU time (``Work`` creation,
start and completion with the recorder on vs off): the number the budget (at most 3 us per
operation) is about.

    python benchmarks/flight_recorder_bench.py [--rounds 5] [--iters 3000] [--stacks both]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

BUFFER_ON = 2000


def _rank_loop(ctx, iters: int, warmup: int) -> tuple[float, float]:
    """(wall, CPU) seconds per allreduce on this rank (one float32, waited for at once)."""
    import pyc10d as dist

    dist.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    tensor = torch.ones(1)
    for _ in range(warmup):
        dist.all_reduce(tensor)
    dist.barrier()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(iters):
        dist.all_reduce(tensor)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    dist.barrier()
    dist.destroy_process_group()
    return elapsed / iters, cpu / iters


def _job(buffer_size: int, stacks: bool, iters: int, warmup: int) -> tuple[float, float]:
    """(wall, CPU) microseconds per allreduce of a fresh world-2 job (its slower rank's wall
    time, its ranks' mean CPU time)."""
    from pyc10d.testing import spawn

    env = {"TORCH_FR_BUFFER_SIZE": str(buffer_size), "PYC10D_FR_STACK": "1" if stacks else "0"}
    per_rank = spawn(_rank_loop, 2, args=(iters, warmup), timeout=600, env=env)
    wall = max(w for w, _ in per_rank) * 1e6
    cpu = statistics.mean(c for _, c in per_rank) * 1e6
    return wall, cpu


def end_to_end(rounds: int, iters: int, warmup: int, stacks: bool) -> dict[str, float]:
    """Median wall and CPU us/op off and on, and the median per-round differences."""
    runs: dict[str, list[float]] = {key: [] for key in ("off", "on", "cpu_off", "cpu_on")}
    for round_index in range(rounds):
        order = (0, BUFFER_ON) if round_index % 2 == 0 else (BUFFER_ON, 0)
        times = {size: _job(size, stacks, iters, warmup) for size in order}
        runs["off"].append(times[0][0])
        runs["on"].append(times[BUFFER_ON][0])
        runs["cpu_off"].append(times[0][1])
        runs["cpu_on"].append(times[BUFFER_ON][1])
    result = {key: statistics.median(values) for key, values in runs.items()}
    result["diff"] = statistics.median(b - a for a, b in zip(runs["off"], runs["on"], strict=True))
    result["cpu_diff"] = statistics.median(
        b - a for a, b in zip(runs["cpu_off"], runs["cpu_on"], strict=True)
    )
    return result


def _make_works(count: int) -> float:
    """CPU seconds of this thread per Work made and completed on a bare group with the current
    recorder (thread CPU time: a busy machine's other processes do not count)."""
    from pyc10d.process_group import ProcessGroup, Work

    pg = ProcessGroup(0, 1)
    outputs = [[torch.ones(1)]]
    start = time.thread_time()
    for seq in range(count):
        work = Work("allreduce", seq, outputs, group=pg)
        work._start()
        work._complete(outputs[0])
    return (time.thread_time() - start) / count


def record_path(count: int, repeats: int, stacks: bool) -> dict[str, float]:
    """Best-of-``repeats`` us per Work (create, start, complete) with the recorder off and on."""
    import os

    from pyc10d.process_group import flight_recorder

    os.environ["PYC10D_FR_STACK"] = "1" if stacks else "0"
    best = {"off": float("inf"), "on": float("inf")}
    for _ in range(repeats):
        for name, size in (("off", 0), ("on", BUFFER_ON)):
            flight_recorder.configure(size)
            best[name] = min(best[name], _make_works(count) * 1e6)
    flight_recorder.configure()
    best["diff"] = best["on"] - best["off"]
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--stacks", choices=("on", "off", "both"), default="both")
    args = parser.parse_args()
    settings = {"on": [True], "off": [False], "both": [True, False]}[args.stacks]
    print("| what | stacks | off (us/op) | on (us/op) | on - off (us/op) |")
    print("|---|---|---:|---:|---:|")
    for stacks in settings:
        label = "yes" if stacks else "no"
        alone = record_path(20000, 7, stacks)
        print(
            f"| Work create+start+complete, in process, thread CPU time, best of 7 | {label} "
            f"| {alone['off']:.2f} "
            f"| {alone['on']:.2f} | {alone['diff']:.2f} |"
        )
    for stacks in settings:
        label = "yes" if stacks else "no"
        job = end_to_end(args.rounds, args.iters, args.warmup, stacks)
        what = f"world-2 4-byte all_reduce, fresh jobs, median of {args.rounds}"
        print(
            f"| {what}, wall | {label} | {job['off']:.2f} | {job['on']:.2f} | {job['diff']:.2f} |"
        )
        print(
            f"| {what}, CPU per rank | {label} | {job['cpu_off']:.2f} | {job['cpu_on']:.2f} "
            f"| {job['cpu_diff']:.2f} |"
        )


if __name__ == "__main__":
    main()
