"""A rank that loops allreduces until one fails: for cutting a host off mid-collective.

Usage: ``allreduce_loop.py TIMEOUT_S N`` (the group's timeout, the element count), with
``env://`` variables set. Prints ``ITER i`` every 10 iterations once each result is checked;
when an allreduce raises, prints ``ERROR <time.monotonic()> <type>: <message>`` (on one line) and
exits 3. Gives up after ``LIMIT_S`` seconds without an error (prints ``NOERROR``, exits 4).
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta

import torch

import pyc10d as dist

LIMIT_S = 120.0


def main(timeout_s: float, n: int) -> int:
    """Join with ``timeout_s``, then allreduce until an error or ``LIMIT_S``; the exit code."""
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=timeout_s))
    rank, world = dist.get_rank(), dist.get_world_size()
    want = torch.full((n,), float(sum(range(1, world + 1))))
    end = time.monotonic() + LIMIT_S
    i = 0
    while time.monotonic() < end:
        t = torch.full((n,), rank + 1.0)
        try:
            dist.all_reduce(t)
        except Exception as exc:
            message = " | ".join(f"{type(exc).__name__}: {exc}".splitlines())
            print(f"ERROR {time.monotonic():.3f} {message}", flush=True)
            return 3
        if not torch.equal(t, want):
            raise AssertionError(f"iteration {i}: allreduce gave {t[:4]}, want {want[:4]}")
        i += 1
        if i % 10 == 0:
            print(f"ITER {i}", flush=True)
    print("NOERROR", flush=True)
    return 4


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]), int(sys.argv[2])))
