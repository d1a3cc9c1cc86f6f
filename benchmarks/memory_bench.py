"""Peak extra memory per rank during a large allreduce: pyc10d vs torch.distributed Gloo.

Each backend runs in its own pair of fresh rank processes (peak RSS only ever grows, so one
process cannot measure both), one after the other in the same run. A rank builds its group and
its float32 tensor, warms up with a small allreduce, then reads its peak resident set size
(``VmHWM``) and runs the large allreduce a few times; the extra memory is the growth of the peak,
shared-memory pages it touched included. Prints a table with the ratio to the tensor size.

The group's own memory is reported apart: the growth of the peak from before the group is
created to after its warm-up (pyc10d's shared-memory arena is faulted in when the group is made,
so its staging slots show there, not as extra memory of the allreduce).

    python benchmarks/memory_bench.py [--mib 64] [--world 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
from datetime import timedelta

import torch


def _peak_rss_bytes() -> int:
    """This process's peak resident set size (``VmHWM``), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_rank(ctx, backend: str, numel: int, repeats: int) -> tuple[int, int]:
    """One rank: (the growth of its peak RSS over ``repeats`` allreduces of ``numel`` floats,
    the growth from creating the group and its warm-up)."""
    tensor = torch.ones(numel)
    torch.ones(1024).add_(1)  # torch's own first-use allocations, before the group
    at_start = _peak_rss_bytes()
    if backend == "pyc10d":
        import pyc10d

        options = pyc10d.ProcessGroup.Options(timeout=timedelta(seconds=120))
        pg = pyc10d.ProcessGroup(ctx.store, ctx.rank, ctx.world_size, options)
    else:
        import torch.distributed as tdist

        pg = tdist.ProcessGroupGloo(
            tdist.FileStore(ctx.init_file, ctx.world_size),
            ctx.rank,
            ctx.world_size,
            timedelta(seconds=120),
        )
    pg.allreduce([torch.ones(1024)]).wait()
    before = _peak_rss_bytes()
    for _ in range(repeats):
        pg.allreduce([tensor]).wait()
    extra = _peak_rss_bytes() - before
    expected = float(ctx.world_size) ** repeats
    if tensor[0].item() != expected:
        raise AssertionError(f"{backend}: got {tensor[0].item()}, expected {expected}")
    if backend == "pyc10d":
        pg.shutdown()
    return extra, before - at_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="tensor size in MiB")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from pyc10d.testing import spawn

    numel = args.mib * 1024 * 1024 // 4
    size = numel * 4
    print(f"Peak extra memory per rank, allreduce of {args.mib} MiB float32, world {args.world}")
    print()
    print("| backend | extra during allreduce, max over ranks MiB | x tensor size | group MiB |")
    print("|---|---:|---:|---:|")
    for backend in ("pyc10d", "gloo"):
        results = spawn(run_rank, args.world, args=(backend, numel, args.repeats), timeout=600)
        worst = max(extra for extra, _ in results)
        group = max(setup for _, setup in results)
        print(f"| {backend} | {worst / 2**20:,.1f} | {worst / size:.2f}x | {group / 2**20:,.1f} |")


if __name__ == "__main__":
    main()
