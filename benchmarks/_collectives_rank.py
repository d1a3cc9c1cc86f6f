"""One rank of ``benchmarks/collectives_bench.py``: times collectives through ONE library's API.

    python benchmarks/_collectives_rank.py --backend {pyc10d,gloo,mpich} --config JSON --result F

``pyc10d`` (``import pyc10d as dist``) and ``gloo`` (``import torch.distributed as dist``) ranks
are env:// ranks (MASTER_ADDR, RANK, ...); ``mpich`` ranks run under ``mpiexec -n W`` and use
mpi4py's buffer API on numpy views of the same torch tensors. Rank 0 writes the JSON result:
``{"times": {"op:bytes": seconds}, "iterations": {...}, "pyc10d_loaded": bool, ...}``.

Each cell: the tensors are made, ``warmup`` calls are timed to estimate one call (the slowest
rank's estimate, so every rank runs the same count), then ``repeats`` blocks of ``iterations``
back-to-back calls (enough for about ``budget_s`` seconds, within ``[min_iters, max_iters]``),
a barrier before each block; a block's time per call is the slowest rank's; the cell keeps the
median block.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

OPS = ("allreduce", "allreduce_async", "broadcast", "allgather", "reduce_scatter", "alltoall")
ASYNC_OPS = ("allreduce_async",)  # only libraries with Work objects (not MPICH here)


def element_counts(nbytes: int, world: int) -> tuple[int, int]:
    """(elements of the full buffer, elements per rank's part) of a float32 cell of ``nbytes``:
    the full buffer is the allreduce / broadcast tensor, allgather's output, reduce_scatter's
    input and alltoall's input and output (nccl-tests' sizes), a multiple of ``world``."""
    numel = max(world, nbytes // 4)
    numel -= numel % world
    return numel, numel // world


def torch_call(dist: Any, op: str, nbytes: int, world: int) -> Callable[[], Any]:
    """One call of ``op`` through the torch.distributed-style module API ``dist``."""
    numel, part = element_counts(nbytes, world)
    full = torch.zeros(numel)  # zeros: sums stay finite however often they run
    if op == "allreduce":
        return lambda: dist.all_reduce(full)
    if op == "allreduce_async":
        return lambda: dist.all_reduce(full, async_op=True).wait()
    if op == "broadcast":
        return lambda: dist.broadcast(full, src=0)
    if op == "allgather":
        piece = torch.zeros(part)
        return lambda: dist.all_gather_into_tensor(full, piece)
    if op == "reduce_scatter":
        piece = torch.zeros(part)
        return lambda: dist.reduce_scatter_tensor(piece, full)
    if op == "alltoall":
        target = torch.zeros(numel)
        return lambda: dist.all_to_all_single(target, full)
    raise ValueError(f"unknown op {op!r}")


def mpi_call(comm: Any, mpi: Any, op: str, nbytes: int, world: int) -> Callable[[], Any]:
    """One call of ``op`` through mpi4py's buffer API, on numpy views of torch tensors."""
    numel, part = element_counts(nbytes, world)
    full = torch.zeros(numel).numpy()
    if op == "allreduce":
        return lambda: comm.Allreduce(mpi.IN_PLACE, full)
    if op == "broadcast":
        return lambda: comm.Bcast(full, root=0)
    if op == "allgather":
        piece = torch.zeros(part).numpy()
        return lambda: comm.Allgather(piece, full)
    if op == "reduce_scatter":
        piece = torch.zeros(part).numpy()
        return lambda: comm.Reduce_scatter_block(full, piece)
    if op == "alltoall":
        target = torch.zeros(numel).numpy()
        return lambda: comm.Alltoall(full, target)
    raise ValueError(f"unknown op {op!r}")


class TorchSync:
    """Barrier and max-over-ranks through the library under test (module API)."""

    def __init__(self, dist: Any) -> None:
        self.dist = dist
        self.cell = torch.zeros(1, dtype=torch.float64)

    def barrier(self) -> None:
        """Every rank has arrived."""
        self.dist.barrier()

    def max(self, value: float) -> float:
        """The largest ``value`` over the ranks."""
        self.cell[0] = value
        self.dist.all_reduce(self.cell, op=self.dist.ReduceOp.MAX)
        return float(self.cell[0])


class MpiSync:
    """Barrier and max-over-ranks through MPI."""

    def __init__(self, comm: Any, mpi: Any) -> None:
        self.comm, self.mpi = comm, mpi

    def barrier(self) -> None:
        """Every rank has arrived."""
        self.comm.Barrier()

    def max(self, value: float) -> float:
        """The largest ``value`` over the ranks."""
        return float(self.comm.allreduce(value, op=self.mpi.MAX))


def timed_block(call: Callable[[], Any], count: int, sync: Any) -> float:
    """Seconds per call of ``count`` back-to-back calls, the slowest rank's."""
    sync.barrier()
    clock = time.perf_counter
    start = clock()
    for _ in range(count):
        call()
    return sync.max((clock() - start) / count)


def time_cell(call: Callable[[], Any], sync: Any, cfg: dict) -> tuple[float, int]:
    """(median seconds per call over ``cfg["repeats"]`` blocks, calls per block)."""
    call()  # first use: connections, buffers
    estimate = timed_block(call, cfg["warmup"], sync)
    iterations = int(cfg["budget_s"] / max(estimate, 1e-9))
    iterations = max(cfg["min_iters"], min(cfg["max_iters"], iterations))
    samples = [timed_block(call, iterations, sync) for _ in range(cfg["repeats"])]
    return statistics.median(samples), iterations


def run_cells(make: Callable[[str, int], Callable[[], Any]], sync: Any, cfg: dict) -> dict:
    """Time every (op, size) cell of ``cfg``; ``make(op, nbytes)`` builds one cell's call."""
    times, iterations = {}, {}
    for op in cfg["ops"]:
        for nbytes in cfg["sizes"]:
            key = f"{op}:{nbytes}"
            times[key], iterations[key] = time_cell(make(op, nbytes), sync, cfg)
    return {"times": times, "iterations": iterations}


def run_torch_style(backend: str, cfg: dict) -> dict:
    """A pyc10d or gloo rank (env:// variables): init, time every cell, destroy."""
    if backend == "pyc10d":
        import pyc10d as dist

        dist.init_process_group(timeout=timedelta(seconds=cfg["op_timeout_s"]))
    else:
        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=timedelta(seconds=cfg["op_timeout_s"]))
    world = dist.get_world_size()
    try:
        result = run_cells(lambda op, n: torch_call(dist, op, n, world), TorchSync(dist), cfg)
        result["rank"] = dist.get_rank()
        if backend == "pyc10d":
            pg = dist._get_default_group()
            transport = getattr(pg, "_transport", None)
            result["arena"] = getattr(pg, "_arena", None) is not None
            arena = " + shared-memory arena" if result["arena"] else ""
            result["transport"] = type(transport).__name__ + arena
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return result


def run_mpi(cfg: dict) -> dict:
    """An MPI rank (under mpiexec): time every cell with mpi4py; no async op."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    world = comm.Get_size()
    sync_ops = {**cfg, "ops": [op for op in cfg["ops"] if op not in ASYNC_OPS]}
    result = run_cells(
        lambda op, n: mpi_call(comm, MPI, op, n, world), MpiSync(comm, MPI), sync_ops
    )
    result["rank"] = comm.Get_rank()
    result["library"] = " ".join(MPI.Get_library_version().split()[:3])
    result["mpi4py"] = sys.modules["mpi4py"].__version__
    comm.Barrier()
    return result


def main() -> None:
    """Parse the command line, run this rank, rank 0 writes the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("pyc10d", "gloo", "mpich"), required=True)
    parser.add_argument("--config", required=True, help="JSON: ops, sizes, repeats, ...")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args()
    cfg = json.loads(args.config)
    torch.set_num_threads(1)  # ranks share the machine's cores, whichever library
    result = run_mpi(cfg) if args.backend == "mpich" else run_torch_style(args.backend, cfg)
    result["pyc10d_loaded"] = "pyc10d" in sys.modules
    result["torch"] = torch.__version__
    if result["rank"] == 0:
        args.result.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
