"""Peak extra memory per rank during a large allreduce: pyc10d vs torch.distributed Gloo.

Each backend runs in its own pair of fresh rank processes (peak RSS only ever grows, so one
process cannot measure both), one after the other in the same run. A rank builds its group and
its float32 tensor, warms up with a small allreduce, then reads its peak resident set size
(``VmHWM``) and runs the large allreduce a few times; the extra memory is the growth of the peak,
shared-memory pages it touched included. Prints a table with the ratio to the tensor size.

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


def run_rank(ctx, backend: str, numel: int, repeats: int) -> int:
    """One rank: the growth of its peak RSS over ``repeats`` allreduces of ``numel`` floats."""
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
    tensor = torch.ones(numel)
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
    return extra


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
    print("| backend | max over ranks MiB | x tensor size |")
    print("|---|---:|---:|")
    for backend in ("pyc10d", "gloo"):
        extras = spawn(run_rank, args.world, args=(backend, numel, args.repeats), timeout=600)
        worst = max(extras)
        print(f"| {backend} | {worst / 2**20:,.1f} | {worst / size:.2f}x |")


if __name__ == "__main__":
    main()
