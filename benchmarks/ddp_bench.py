"""DDP training step: pyc10d's DistributedDataParallel vs torch's, side by side in one run.

Two ranks (pyc10d's test harness), each with torch's Gloo default group and a pyc10d default
group, train two identical copies of a model with SGD: one wrapped in
``torch.nn.parallel.DistributedDataParallel``, one in ``pyc10d.DistributedDataParallel``, on the
same batches. After a warm-up (which also rebuilds the buckets), every round times a block of
steps of each of five things, in an order that flips every round so machine noise hits all alike:

- a step (zero_grad, forward, backward, ``optimizer.step()``) under torch's DDP;
- the same step under pyc10d's DDP;
- the same step of a third copy of the model without DDP (compute only);
- the allreduces of torch DDP's buckets alone (same sizes, launched back to back, then waited);
- the allreduces of pyc10d DDP's buckets alone.

A block's time is the slowest rank's mean wall-clock time per step; next to it, in parentheses,
its CPU time (``time.process_time``: every thread of the rank process, so the communication
threads too), which other processes on a busy machine disturb much less than wall-clock time.
The tables show the median over rounds. Ratios and differences are taken within each round
first (paired: the blocks of a round ran close together, in similar machine conditions), then
their median over rounds is shown:

- torch / pyc10d = torch DDP step / pyc10d DDP step (> 1: pyc10d is faster);
- exposed communication = DDP step - compute-only step (what DDP adds to a step), and DDP's added
  CPU = the same difference in CPU time;
- overlap = 1 - exposed / allreduce alone (the share of the allreduce time hidden behind backward;
  negative when DDP adds more than its allreduces take alone);
- backward tail = from the moment the last gradient of the step was accumulated on any rank to
  the moment ``backward()`` had returned on every rank (``time.perf_counter`` is the host's
  monotonic clock, shared by the ranks): the communication left after backward's compute, i.e.
  the last buckets' allreduces and copying the averaged gradients into ``.grad``.

At the end both DDP copies must hold the same parameters (allclose) on every rank, and the ranks
must agree: the two implementations trained identically. ``torch.set_num_threads(1)`` per rank.

    python benchmarks/ddp_bench.py [--steps 5] [--rounds 12] [--warmup 3] [--models mlp cnn]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("mlp", "cnn")
BATCH = 32
NUM_CLASSES = 10
POOL = 4  # distinct batches per rank, used in turn
LR = 0.01
IMPLS = ("torch", "pyc10d")


def build_model(name: str) -> nn.Module:
    """The benchmark's models: a ~19M-parameter MLP or a small CNN for 32x32x3 images."""
    if name == "mlp":
        layers: list[nn.Module] = [nn.Linear(1024, 2048), nn.ReLU()]
        for _ in range(4):
            layers += [nn.Linear(2048, 2048), nn.ReLU()]
        layers.append(nn.Linear(2048, NUM_CLASSES))
        return nn.Sequential(*layers)
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(128 * 4 * 4, 256),
            nn.ReLU(),
            nn.Linear(256, NUM_CLASSES),
        )
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def make_batches(name: str, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``POOL`` (input, label) batches of ``BATCH`` samples, different on every rank."""
    generator = torch.Generator().manual_seed(1000 + rank)
    shape = (BATCH, 1024) if name == "mlp" else (BATCH, 3, 32, 32)
    return [
        (
            torch.randn(shape, generator=generator),
            torch.randint(NUM_CLASSES, (BATCH,), generator=generator),
        )
        for _ in range(POOL)
    ]


@dataclass
class Trainer:
    """One model copy (DDP-wrapped or plain), its SGD optimizer and its batches.

    A hook after each parameter's gradient accumulation records when the last gradient of the
    backward was ready; each step appends that time and the time ``backward()`` returned.
    """

    model: nn.Module
    params: list[nn.Parameter]
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    optimizer: torch.optim.Optimizer = field(init=False)
    steps_done: int = 0
    last_ready: float = 0.0
    ready_times: list[float] = field(default_factory=list)
    end_times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.SGD(self.params, lr=LR)
        for param in self.params:
            param.register_post_accumulate_grad_hook(self._mark_ready)

    def _mark_ready(self, _param: torch.Tensor) -> None:
        self.last_ready = time.perf_counter()

    def step(self) -> None:
        """One training step on the next batch of the pool."""
        inputs, labels = self.batches[self.steps_done % len(self.batches)]
        self.steps_done += 1
        self.optimizer.zero_grad()
        loss = F.cross_entropy(self.model(inputs), labels)
        loss.backward()
        self.end_times.append(time.perf_counter())
        self.ready_times.append(self.last_ready)
        self.optimizer.step()

    def take_tails(self, across_ranks: bool) -> list[float]:
        """Per step since the last call: backward's end - the last gradient's accumulation.

        With ``across_ranks`` (DDP: the ranks' steps are in lockstep), from the last gradient on
        any rank to the end of backward on every rank; a collective over torch's Gloo group, so
        every rank must call it after the same steps. Without, this rank's own steps.
        """
        import torch.distributed as tdist

        ready = torch.tensor(self.ready_times, dtype=torch.float64)
        ends = torch.tensor(self.end_times, dtype=torch.float64)
        if across_ranks:
            tdist.all_reduce(ready, op=tdist.ReduceOp.MAX)
            tdist.all_reduce(ends, op=tdist.ReduceOp.MAX)
        self.ready_times.clear()
        self.end_times.clear()
        return (ends - ready).tolist()


def _bucket_bytes_torch(ddp: nn.Module) -> list[int]:
    """torch DDP's current buckets (its logging data shows the rebuilt ones an iteration late)."""
    buckets = ddp.reducer._get_zeros_like_grad_buckets()
    return [b.buffer().numel() * b.buffer().element_size() for b in buckets]


def _bucket_bytes_pyc10d(ddp: nn.Module) -> list[int]:
    """pyc10d DDP's current buckets, in reduction order."""
    return [b.buffer.numel() * b.buffer.element_size() for b in ddp.reducer._buckets]


def _allreduce_alone(all_reduce: Callable[..., Any], nbytes: list[int]) -> Callable[[], None]:
    """A callable that allreduces buffers of ``nbytes`` like DDP does: all launched, then waited."""
    buffers = [torch.zeros(n // 4) for n in nbytes]  # zeros: sums stay finite, no denormals

    def run() -> None:
        works = [all_reduce(buffer, async_op=True) for buffer in buffers]
        for work in works:
            work.wait()

    return run


def _slowest(seconds: float) -> float:
    """The largest of every rank's ``seconds`` (over torch's Gloo group)."""
    import torch.distributed as tdist

    value = torch.tensor([seconds], dtype=torch.float64)
    tdist.all_reduce(value, op=tdist.ReduceOp.MAX)
    return value.item()


def _params_agree(a: nn.Module, b: nn.Module) -> dict[str, Any]:
    """Compare two modules' parameters here, and across ranks with rank 0's (a collective)."""
    import torch.distributed as tdist

    flat_a = torch.cat([p.detach().reshape(-1) for p in a.parameters()])
    flat_b = torch.cat([p.detach().reshape(-1) for p in b.parameters()])
    reference = flat_a.clone()
    tdist.broadcast(reference, 0)
    across = max((flat_a - reference).abs().max().item(), (flat_b - reference).abs().max().item())
    mismatch = 0.0 if torch.allclose(flat_a, flat_b) else 1.0
    return {
        "max_diff": _slowest((flat_a - flat_b).abs().max().item()),
        "allclose": _slowest(mismatch) == 0.0,
        "ranks_max_diff": _slowest(across),
    }


def bench_model(name: str, rank: int, steps: int, rounds: int, warmup: int) -> dict[str, Any]:
    """Time one model on this rank; every returned time is already the slowest rank's."""
    import torch.distributed as tdist

    import pyc10d

    torch.manual_seed(0)
    base = build_model(name)
    initial = copy.deepcopy(base)
    batches = make_batches(name, rank)
    ddp_torch = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(base))
    ddp_ours = pyc10d.DistributedDataParallel(copy.deepcopy(base))
    trainers = {
        "torch": Trainer(ddp_torch, list(ddp_torch.parameters()), batches),
        "pyc10d": Trainer(ddp_ours, list(ddp_ours.parameters()), batches),
        "compute": Trainer(base, list(base.parameters()), batches),
    }
    for trainer in trainers.values():
        for _ in range(warmup):  # the first steps also rebuild the DDP buckets
            trainer.step()
        trainer.take_tails(across_ranks=False)
    buckets = {"torch": _bucket_bytes_torch(ddp_torch), "pyc10d": _bucket_bytes_pyc10d(ddp_ours)}
    tasks: dict[str, Callable[[], None]] = {key: t.step for key, t in trainers.items()}
    tasks["allreduce torch"] = _allreduce_alone(tdist.all_reduce, buckets["torch"])
    tasks["allreduce pyc10d"] = _allreduce_alone(pyc10d.all_reduce, buckets["pyc10d"])
    for task in ("allreduce torch", "allreduce pyc10d"):
        tasks[task]()  # warm up the buffers and connections
    samples: dict[str, list[float]] = {key: [] for key in tasks}
    cpu_samples: dict[str, list[float]] = {key: [] for key in tasks}
    tail_samples: dict[str, list[float]] = {key: [] for key in trainers}
    for index in range(rounds):
        order = list(tasks) if index % 2 == 0 else list(reversed(tasks))
        for key in order:
            tdist.barrier()
            start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(steps):
                tasks[key]()
            cpu = time.process_time() - cpu_start
            samples[key].append(_slowest((time.perf_counter() - start) / steps))
            cpu_samples[key].append(_slowest(cpu / steps))
            if key in trainers:
                lockstep = key != "compute"
                tails = statistics.median(trainers[key].take_tails(across_ranks=lockstep))
                tail_samples[key].append(tails if lockstep else _slowest(tails))
    assert trainers["torch"].steps_done == trainers["pyc10d"].steps_done
    check = _params_agree(ddp_torch.module, ddp_ours.module)
    pairs = zip(ddp_ours.module.parameters(), initial.parameters(), strict=True)
    check["trained"] = any(not torch.equal(p, q) for p, q in pairs)
    check["steps"] = trainers["pyc10d"].steps_done
    return {
        "params": sum(p.numel() for p in base.parameters()),
        "buckets": buckets,
        "samples": samples,
        "cpu": cpu_samples,
        "tail": {key: statistics.median(values) for key, values in tail_samples.items()},
        "check": check,
    }


def run_rank(ctx: Any, models: list[str], steps: int, rounds: int, warmup: int) -> dict:
    """One rank: both default groups, then every model; returns {model: results}."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch.distributed as tdist

    import pyc10d

    torch.set_num_threads(1)  # two ranks on two cores
    tdist.init_process_group(
        "gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    pyc10d.init_process_group(store=ctx.store, rank=ctx.rank, world_size=ctx.world_size)
    try:
        return {name: bench_model(name, ctx.rank, steps, rounds, warmup) for name in models}
    finally:
        pyc10d.destroy_process_group()
        tdist.destroy_process_group()


def _ms(seconds: float) -> str:
    """Seconds as milliseconds, two decimals."""
    return f"{seconds * 1e3:.2f}"


def _mib(sizes: list[int]) -> str:
    """Bucket sizes in MiB, in reduction order."""
    return " + ".join(f"{n / (1 << 20):.1f}" for n in sizes)


def _paired(fn: Callable[..., float], *series: list[float]) -> float:
    """The median over rounds of ``fn`` applied to each round's values of ``series``."""
    return statistics.median(fn(*values) for values in zip(*series, strict=True))


def _with_cpu(wall: list[float], cpu: list[float]) -> str:
    """Median wall-clock ms with the median CPU ms in parentheses."""
    return f"{_ms(statistics.median(wall))} ({_ms(statistics.median(cpu))})"


def _ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``a / b``."""
    return _paired(lambda x, y: x / y, a, b)


def report(results: dict[str, dict], world: int) -> None:
    """Print the step-time table, the communication table and the parameter check."""
    print(f"## DDP training step, world size {world}, batch {BATCH} per rank, SGD\n")
    print("ms per step, CPU ms in parentheses.\n")
    print(
        "| model | params | compute only | torch DDP | pyc10d DDP | torch / pyc10d "
        "| torch / pyc10d CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        wall, cpu = result["samples"], result["cpu"]
        cells = " | ".join(_with_cpu(wall[key], cpu[key]) for key in ("compute", *IMPLS))
        print(
            f"| {name} | {result['params'] / 1e6:.2f}M | {cells} "
            f"| {_ratio(wall['torch'], wall['pyc10d']):.2f}x "
            f"| {_ratio(cpu['torch'], cpu['pyc10d']):.2f}x |"
        )
    print("\n## Communication\n")
    print(
        "| model | DDP | buckets MiB | allreduce alone ms (CPU) | exposed ms (step - compute) "
        "| overlap | DDP's added CPU ms | backward tail ms |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, result in results.items():
        wall, cpu = result["samples"], result["cpu"]
        for impl in IMPLS:
            alone = f"allreduce {impl}"
            exposed = _paired(lambda a, b: a - b, wall[impl], wall["compute"])
            overlap = _paired(
                lambda a, b, c: 1 - (a - b) / c, wall[impl], wall["compute"], wall[alone]
            )
            added_cpu = _paired(lambda a, b: a - b, cpu[impl], cpu["compute"])
            print(
                f"| {name} | {impl} | {_mib(result['buckets'][impl])} "
                f"| {_with_cpu(wall[alone], cpu[alone])} | {_ms(exposed)} "
                f"| {overlap * 100:.0f}% | {_ms(added_cpu)} | {_ms(result['tail'][impl])} |"
            )
    tails = ", ".join(f"{name} {_ms(r['tail']['compute'])}" for name, r in results.items())
    print(f"\nBackward tail without DDP (compute only), ms: {tails}.")
    print("\n## Same training\n")
    for name, result in results.items():
        check = result["check"]
        print(
            f"- {name}: after {check['steps']} steps, max |torch - pyc10d| = "
            f"{check['max_diff']:.3g} (allclose: {check['allclose']}), max difference "
            f"across ranks {check['ranks_max_diff']:.3g}, parameters moved: {check['trained']}"
        )


def main() -> None:
    """Parse the options, run both ranks, print the tables; exit 1 if the models diverged."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=12, help="timed blocks per task")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (>= 2)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = parser.parse_args()
    if args.warmup < 2:
        parser.error("--warmup must be at least 2: DDP rebuilds its buckets after the first step")

    from pyc10d.testing import spawn

    world = 2
    results = spawn(
        run_rank,
        world,
        args=(args.models, args.steps, args.rounds, args.warmup),
        timeout=1800,
    )[0]
    report(results, world)
    if not all(r["check"]["allclose"] for r in results.values()):
        raise SystemExit("torch DDP and pyc10d DDP parameters differ")


if __name__ == "__main__":
    main()
