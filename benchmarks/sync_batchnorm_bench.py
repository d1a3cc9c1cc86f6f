"""SyncBatchNorm's cost: a DDP training step with ``pyc10d.nn.SyncBatchNorm`` vs plain BatchNorm.

Two fresh rank processes (pyc10d's test harness) join a pyc10d default group and train two copies
of a small CNN (three conv / batch norm / ReLU blocks, then a linear layer) under
``pyc10d.DistributedDataParallel`` with SGD, on the same batches: one with its ``BatchNorm2d``
layers converted by ``SyncBatchNorm.convert_sync_batchnorm`` (statistics over both ranks: an
all-gather per layer in forward, an all-reduce per layer in backward), one with the plain layers
(each rank's own statistics). After a warm-up, each round times a block of steps of each copy,
in an order that flips every round; a block's time is the slowest rank's mean wall-clock time
per step (CPU time in parentheses), and the table shows the medians over rounds. The ratio
(SyncBatchNorm / BatchNorm) and the difference are taken within each round, then their median
is shown (for wall-clock and CPU time): the difference is what syncing the statistics adds to a
step.

At the end the SyncBatchNorm copy's parameters and running statistics must agree across the
ranks (what syncing guarantees). ``torch.set_num_threads(1)`` per rank.

    python benchmarks/sync_batchnorm_bench.py [--steps 5] [--rounds 10] [--warmup 3] [--batch 32]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10
POOL = 4  # distinct batches per rank, used in turn
LR = 0.01
KINDS = ("BatchNorm", "SyncBatchNorm")


def build_model() -> nn.Module:
    """A small CNN for 32x32x3 images with three BatchNorm2d layers."""
    blocks: list[nn.Module] = []
    for cin, cout in ((3, 32), (32, 64), (64, 128)):
        blocks += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]
        blocks += [nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(128 * 4 * 4, NUM_CLASSES))


def _batches(rank: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``POOL`` (image, label) batches, different on every rank."""
    g = torch.Generator().manual_seed(1000 + rank)
    return [
        (
            torch.randn(batch, 3, 32, 32, generator=g),
            torch.randint(NUM_CLASSES, (batch,), generator=g),
        )
        for _ in range(POOL)
    ]


def _slowest(seconds: float) -> float:
    """The largest of every rank's ``seconds`` (a pyc10d all-reduce)."""
    import pyc10d

    value = torch.tensor([seconds], dtype=torch.float64)
    pyc10d.all_reduce(value, op=pyc10d.ReduceOp.MAX)
    return value.item()


def _agree_across_ranks(model: nn.Module) -> float:
    """The largest difference between this rank's parameters/buffers and rank 0's."""
    import pyc10d

    flat = torch.cat([t.detach().double().reshape(-1) for t in model.state_dict().values()])
    reference = flat.clone()
    pyc10d.broadcast(reference, 0)
    return _slowest((flat - reference).abs().max().item())


def run_rank(ctx: Any, steps: int, rounds: int, warmup: int, batch: int) -> dict[str, Any]:
    """One rank: both copies, the timed rounds; returns the slowest-rank samples."""
    import pyc10d
    from pyc10d.nn import SyncBatchNorm

    torch.set_num_threads(1)  # two ranks on two cores
    pyc10d.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    try:
        torch.manual_seed(0)
        base = build_model()
        models = {
            "BatchNorm": pyc10d.DistributedDataParallel(copy.deepcopy(base)),
            "SyncBatchNorm": pyc10d.DistributedDataParallel(
                SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(base))
            ),
        }
        optimizers = {k: torch.optim.SGD(m.parameters(), lr=LR) for k, m in models.items()}
        batches = _batches(ctx.rank, batch)
        done = dict.fromkeys(models, 0)

        def step(kind: str) -> None:
            inputs, labels = batches[done[kind] % POOL]
            done[kind] += 1
            optimizers[kind].zero_grad()
            F.cross_entropy(models[kind](inputs), labels).backward()
            optimizers[kind].step()

        for kind in KINDS:
            for _ in range(warmup):
                step(kind)
        wall: dict[str, list[float]] = {k: [] for k in KINDS}
        cpu: dict[str, list[float]] = {k: [] for k in KINDS}
        for index in range(rounds):
            for kind in KINDS if index % 2 == 0 else tuple(reversed(KINDS)):
                pyc10d.barrier()
                start, cpu_start = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    step(kind)
                cpu[kind].append(_slowest((time.process_time() - cpu_start) / steps))
                wall[kind].append(_slowest((time.perf_counter() - start) / steps))
        return {
            "wall": wall,
            "cpu": cpu,
            "agree": _agree_across_ranks(models["SyncBatchNorm"].module),
            "params": sum(p.numel() for p in base.parameters()),
        }
    finally:
        pyc10d.destroy_process_group()


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _paired(fn: Any, a: list[float], b: list[float]) -> float:
    """The median over rounds of ``fn(a_round, b_round)``."""
    return statistics.median(fn(x, y) for x, y in zip(a, b, strict=True))


def report(result: dict[str, Any], world: int, batch: int) -> None:
    """Print the markdown table and the cross-rank check."""
    wall, cpu = result["wall"], result["cpu"]
    print(f"## SyncBatchNorm vs BatchNorm, DDP training step, world size {world}\n")
    print(
        f"Small CNN ({result['params'] / 1e6:.2f}M parameters, 3 batch norm layers), "
        f"batch {batch} x 3 x 32 x 32 per rank, SGD; ms per step, CPU ms in parentheses.\n"
    )
    print(
        "| BatchNorm | SyncBatchNorm | SyncBatchNorm / BatchNorm | CPU ratio | added ms per step "
        "| added CPU ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    cells = [f"{_ms(statistics.median(wall[k]))} ({_ms(statistics.median(cpu[k]))})" for k in KINDS]
    ratio = _paired(lambda s, b: s / b, wall["SyncBatchNorm"], wall["BatchNorm"])
    added = _paired(lambda s, b: s - b, wall["SyncBatchNorm"], wall["BatchNorm"])
    cpu_ratio = _paired(lambda s, b: s / b, cpu["SyncBatchNorm"], cpu["BatchNorm"])
    cpu_added = _paired(lambda s, b: s - b, cpu["SyncBatchNorm"], cpu["BatchNorm"])
    print(
        f"| {cells[0]} | {cells[1]} | {ratio:.2f}x | {cpu_ratio:.2f}x | {_ms(added)} "
        f"| {_ms(cpu_added)} |"
    )
    print(
        f"\nSyncBatchNorm copy: max difference across ranks (parameters, running statistics) "
        f"{result['agree']:.3g}."
    )


def main() -> None:
    """Parse the options, run the two ranks, print the table; exit 1 if the ranks disagree."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=10, help="timed blocks per copy")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 2)")
    parser.add_argument("--batch", type=int, default=32, help="samples per rank")
    args = parser.parse_args()

    from pyc10d.testing import spawn

    world = 2
    result = spawn(
        run_rank,
        world,
        args=(args.steps, args.rounds, args.warmup, args.batch),
        timeout=1800,
        start_method="spawn",
    )[0]
    report(result, world, args.batch)
    if result["agree"] > 1e-6:
        raise SystemExit("the SyncBatchNorm copies differ across ranks")


if __name__ == "__main__":
    main()
