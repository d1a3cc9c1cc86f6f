"""pyc10d as a torch.distributed backend: torch's own DDP, all_reduce and funcol, vs Gloo.

Every measurement runs in fresh processes holding ONE library: a launch starts the ranks
(world size 2) of one kind, and the kinds alternate round after round (gloo, pyc10d, native,
then native, pyc10d, gloo, ...) so that machine noise hits all alike:

- ``gloo``: ``torch.distributed.init_process_group("gloo")``. pyc10d is not even imported
  (``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` keeps torch from loading its entry point; checked).
- ``pyc10d``: ``torch.distributed.init_process_group("pyc10d")``, the backend registered by
  pyc10d's ``torch.backends`` entry point (the script never imports pyc10d itself).
- ``native``: pyc10d's own API, ``import pyc10d as dist; dist.init_process_group()``.

Measured (``torch.set_num_threads(1)`` per rank; a time is the slowest rank's median):

a. torch's ``DistributedDataParallel`` training step (zero_grad, forward, backward, SGD step) of
   an ~18M-parameter MLP, gloo vs pyc10d, and the same step without DDP (compute only);
b. ``dist.all_reduce(t)`` latency, back to back, for 4 B, 16 KiB and 1 MiB float32 tensors:
   gloo, the adapter (``pyc10d``) and pyc10d's own API (``native``); the adapter's ranks also
   make pyc10d's own default group and compare the two APIs in alternating blocks;
c. functional collectives: ``funcol.wait_tensor(funcol.all_reduce(t, "sum", group))``.

Ratios and differences are paired: taken within each round (launches close together in time),
then the median over rounds. A last launch (world size 1 by default: no peer to wait for, so
only the Python path is timed) profiles the adapter's per-call path: layer by layer (each layer
an interleaved block of calls), each piece alone, and cProfile. The markdown report goes to
benchmarks/results/torch_backend.md (not with ``--quick``, unless ``--output`` is given).

    python benchmarks/torch_backend_bench.py [--quick] [--rounds 8] [--only ddp allreduce funcol]
        [--no-profile] [--profile-world 1] [--profile-bytes 4] [--output FILE] [--raw FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from _common import (
    code_state,
    cprofile_rows,
    free_port,
    human,
    paired,
    rank_env,
    run_processes,
)

KINDS = ("gloo", "pyc10d", "native")
PARTS = {"gloo": ("ddp", "allreduce", "funcol"), "pyc10d": ("ddp", "allreduce", "funcol")}
PARTS["native"] = ("allreduce",)
WORLD = 2
IN_FEATURES, WIDTH, HIDDEN_LAYERS, CLASSES = 512, 2048, 4, 10
ALLREDUCE_SIZES = (4, 16 * 1024, 1 << 20)
FUNCOL_SIZES = (4, 16 * 1024)
DEFAULT_OUTPUT = Path(__file__).parent / "results" / "torch_backend.md"
CHAIN = (
    "dist.all_reduce(t)",
    "group.allreduce([t], torch opts).wait()",
    "TorchWork(pg.allreduce([t], from_torch(opts))).wait()",
    "TorchWork(pg.allreduce([t], pyc10d opts)).wait()",
    "pg.allreduce([t], pyc10d opts).wait()",
)
OWN_API = "pyc10d.all_reduce(t) (pyc10d's own API, its own group in this process)"
ASYNC_LAYERS = (
    "`group.allreduce([t], torch opts, asyncOp=True).wait()`",
    "`funcol.wait_tensor(funcol.all_reduce(t, 'sum', group))`",
    "the same funcol call, op run by the waiter (what-if: `Engine.submit(wake=False)`)",
)
BLOCKS = 10  # alternating blocks of the in-process adapter vs own API comparison
TARGETS = {"ddp": 1.3, "overhead_us": 15.0, "funcol": 1.5}

FULL = {
    "steps": 15,
    "warmup": 3,
    "batch": 8,
    "reps": 2000,
    "big_reps": 400,
    "rounds": 8,
    "profile_rounds": 10,
    "profile_reps": 400,
    "timeout": 900,
}
QUICK = {
    "steps": 4,
    "warmup": 2,
    "batch": 8,
    "reps": 200,
    "big_reps": 50,
    "rounds": 1,
    "profile_rounds": 2,
    "profile_reps": 100,
    "timeout": 300,
}


# ==== the ranks ================================================================================


def build_mlp() -> Any:
    """The benchmark's MLP: 512 -> 2048 (x4 hidden 2048x2048) -> 10, 17.9M parameters."""
    from torch import nn

    layers: list[nn.Module] = [nn.Linear(IN_FEATURES, WIDTH), nn.ReLU()]
    for _ in range(HIDDEN_LAYERS):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    layers.append(nn.Linear(WIDTH, CLASSES))
    return nn.Sequential(*layers)


def _stepper(model: Any, batches: list) -> Callable[[], None]:
    """One SGD step of ``model`` per call (zero_grad, forward, backward, step), cycling batches."""
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    count = [0]

    def step() -> None:
        inputs, labels = batches[count[0] % len(batches)]
        count[0] += 1
        optimizer.zero_grad()
        F.cross_entropy(model(inputs), labels).backward()
        optimizer.step()

    return step


def _buckets_alone(dist: Any, ddp: Any) -> Callable[[], None]:
    """DDP's bucket allreduces alone (its current bucket sizes): all issued, then all waited."""
    import torch

    buffers = [torch.zeros(b.buffer().numel()) for b in ddp.reducer._get_zeros_like_grad_buckets()]

    def run() -> None:
        works = [dist.all_reduce(buffer, async_op=True) for buffer in buffers]
        for work in works:
            work.wait()

    return run


def part_ddp(dist: Any, cfg: dict) -> dict:
    """torch DDP steps, compute-only steps and DDP's bucket allreduces alone, interleaved
    (a barrier before each); a checksum of the trained weights."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    rank = dist.get_rank()
    generator = torch.Generator().manual_seed(100 + rank)
    batches = [
        (
            torch.randn(cfg["batch"], IN_FEATURES, generator=generator),
            torch.randint(CLASSES, (cfg["batch"],), generator=generator),
        )
        for _ in range(4)
    ]
    torch.manual_seed(0)
    tasks = {"compute": _stepper(build_mlp(), batches)}
    torch.manual_seed(0)
    ddp = DistributedDataParallel(build_mlp())
    tasks["step"] = _stepper(ddp, batches)
    for _ in range(cfg["warmup"]):  # the first steps also rebuild DDP's buckets
        tasks["compute"]()
        tasks["step"]()
    tasks["comm"] = _buckets_alone(dist, ddp)
    tasks["comm"]()
    times: dict[str, list[float]] = {key: [] for key in tasks}
    cpu: dict[str, list[float]] = {key: [] for key in tasks}
    for index in range(cfg["steps"]):
        for key in list(tasks) if index % 2 == 0 else list(reversed(tasks)):
            dist.barrier()
            start, cpu_start = time.perf_counter(), time.process_time()
            tasks[key]()
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - cpu_start)
    weights = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()]).double()
    result = {key: statistics.median(values) for key, values in times.items()}
    result.update({f"{key}_cpu": statistics.median(values) for key, values in cpu.items()})
    sizes = [b.buffer().numel() * 4 for b in ddp.reducer._get_zeros_like_grad_buckets()]
    return {
        **result,
        "params": sum(p.numel() for p in ddp.parameters()),
        "checksum": [weights.sum().item(), weights.abs().sum().item()],
        "buckets": sizes,
    }


def median_call_us(fn: Callable[[], Any], reps: int, warmup: int = 50) -> float:
    """Median µs of ``fn()`` over ``reps`` back-to-back calls, each timed alone."""
    for _ in range(warmup):
        fn()
    times = []
    clock = time.perf_counter_ns
    for _ in range(reps):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times) / 1e3


def _reps(cfg: dict, nbytes: int) -> int:
    return cfg["big_reps"] if nbytes >= (1 << 20) else cfg["reps"]


def part_allreduce(dist: Any, cfg: dict) -> dict:
    """``dist.all_reduce(t)`` median µs per size (zeros: sums stay finite)."""
    import torch

    result = {}
    for nbytes in ALLREDUCE_SIZES:
        tensor = torch.zeros(nbytes // 4)
        dist.barrier()
        call = lambda t=tensor: dist.all_reduce(t)  # noqa: E731
        result[str(nbytes)] = median_call_us(call, _reps(cfg, nbytes))
    if cfg.get("kind") == "pyc10d":
        result.update(_adapter_minus_own_api(dist, cfg))
    return result


def _adapter_minus_own_api(dist: Any, cfg: dict) -> dict[str, float]:
    """In the adapter's ranks: adapter - pyc10d's own API, µs per call, measured in the same
    process in alternating blocks (median over blocks of the difference of block medians), so
    that the machine's state is the same for both; keys ``own-api-diff:<size>``."""
    import torch

    own_api = _own_api_group(dist)
    result = {}
    try:
        for nbytes in ALLREDUCE_SIZES:
            tensor = torch.zeros(nbytes // 4)
            calls = [lambda t=tensor: dist.all_reduce(t), lambda t=tensor: own_api.all_reduce(t)]
            reps = max(20, _reps(cfg, nbytes) // 10)
            diffs = []
            for block in range(BLOCKS):
                times = [0.0, 0.0]
                for index in (0, 1) if block % 2 == 0 else (1, 0):
                    dist.barrier()
                    times[index] = median_call_us(calls[index], reps, warmup=10)
                diffs.append(times[0] - times[1])
            result[f"own-api-diff:{nbytes}"] = statistics.median(diffs)
    finally:
        own_api.destroy_process_group()
    return result


def part_funcol(dist: Any, cfg: dict) -> dict:
    """Functional all_reduce + wait_tensor median µs per size; checks the sum once."""
    import torch
    import torch.distributed._functional_collectives as funcol

    group = dist.group.WORLD
    check = funcol.wait_tensor(funcol.all_reduce(torch.ones(3), "sum", group))
    assert check.tolist() == [float(WORLD)] * 3, check
    result = {}
    for nbytes in FUNCOL_SIZES:
        tensor = torch.zeros(nbytes // 4)

        def call(t: Any = tensor) -> Any:
            return funcol.wait_tensor(funcol.all_reduce(t, "sum", group))

        dist.barrier()
        result[str(nbytes)] = median_call_us(call, _reps(cfg, nbytes))
    return result


def _own_api_group(dist: Any) -> Any:
    """pyc10d's own default group, in this (adapter) process, over torch's store: the reference
    for "pyc10d's own API" measured in the same process, interleaved with the adapter's calls."""
    import pyc10d

    try:
        from pyc10d.store.torch_store import TorchStore
    except ImportError:  # its first home
        from pyc10d.torch_backend.store import TorchStore  # type: ignore[no-redef]

    store = TorchStore(dist.distributed_c10d._get_default_store())
    pyc10d.init_process_group(
        store=pyc10d.PrefixStore("torch_backend_bench/own-api", store),
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
    )
    return pyc10d


def _inline(call: Callable[[], Any], engine: Any) -> Callable[[], Any]:
    """``call`` with ``engine`` never waking a worker: asyncOp=True ops run in the waiter.

    A what-if (a patched instance attribute, restored after each call), not pyc10d's behaviour.
    """
    submit = engine.submit

    def patched() -> Any:
        engine.submit = lambda work, run, wake=True: submit(work, run, wake=False)
        try:
            return call()
        finally:
            del engine.submit  # back to the class's method

    return patched


def _profile_layers(dist: Any, own_api: Any, tensor: Any) -> dict[str, Callable[[], Any]]:
    """The adapter's call path for ``dist.all_reduce(tensor)``, peeled layer by layer."""
    import torch.distributed._functional_collectives as funcol

    from pyc10d.process_group.options import AllreduceOptions
    from pyc10d.torch_backend.options import from_torch
    from pyc10d.torch_backend.work import TorchWork

    group = dist.group.WORLD
    pg = group.pg  # the pyc10d ProcessGroup behind the adapter

    def torch_opts(async_op: bool = False) -> Any:
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.SUM
        opts.asyncOp = async_op
        return opts

    def ours() -> Any:
        opts = AllreduceOptions()
        opts.asyncOp = False
        return opts

    def funcol_call() -> Any:
        return funcol.wait_tensor(funcol.all_reduce(tensor, "sum", group))

    return {
        # the synchronous chain, outermost first: each row calls the next one's code
        CHAIN[0]: lambda: dist.all_reduce(tensor),
        CHAIN[1]: lambda: group.allreduce([tensor], torch_opts()).wait(),
        CHAIN[2]: lambda: TorchWork(
            pg.allreduce([tensor], from_torch(AllreduceOptions, torch_opts()))
        ).wait(),
        CHAIN[3]: lambda: TorchWork(pg.allreduce([tensor], ours())).wait(),
        CHAIN[4]: lambda: pg.allreduce([tensor], ours()).wait(),
        OWN_API: lambda: own_api.all_reduce(tensor),
        # the asynchronous paths (asyncOp=True: a worker thread is woken to run it)
        ASYNC_LAYERS[0]: lambda: group.allreduce([tensor], torch_opts(True)).wait(),
        ASYNC_LAYERS[1]: funcol_call,
        ASYNC_LAYERS[2]: _inline(funcol_call, pg._engine),
    }


def _local_us(fn: Callable[[], Any], number: int = 20000) -> float:
    """Best-of-5 mean µs of a local (no communication) call."""
    import timeit

    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


PIECES = {
    "torch_opts": "torch `AllreduceOptions()` + one field set",
    "from_torch": "`from_torch(AllreduceOptions, opts)` (whole)",
    "ours": "  pyc10d `AllreduceOptions()` (its `__init__` builds a `ReduceOp(SUM)`)",
    "read_op": "  read `opts.reduceOp` from torch's options (pybind copy)",
    "to_reduce_op": "  `to_reduce_op(torch ReduceOp)`",
    "torch_work": "`TorchWork(work)` (torch `Work.__init__` through pybind)",
    "torch_work_wait": "`TorchWork.wait()` on a finished Work",
    "checked": "`ProcessGroupPyc10d._checked()` (DETAIL off)",
}


def _profile_pieces(dist: Any, tensor: Any) -> dict[str, float]:
    """µs of each adapter piece alone, on no communication (a finished Work is reused)."""
    from pyc10d.core.reduce_op import to_reduce_op
    from pyc10d.process_group.options import AllreduceOptions
    from pyc10d.torch_backend.options import from_torch
    from pyc10d.torch_backend.work import TorchWork

    group = dist.group.WORLD
    opts = dist.AllreduceOptions()
    opts.asyncOp = False
    work = group.pg.allreduce([tensor], AllreduceOptions())
    work.wait()
    torch_op = opts.reduceOp
    calls = {
        "torch_opts": lambda: setattr(dist.AllreduceOptions(), "asyncOp", False),
        "from_torch": lambda: from_torch(AllreduceOptions, opts),
        "ours": AllreduceOptions,
        "read_op": lambda: opts.reduceOp,
        "to_reduce_op": lambda: to_reduce_op(torch_op),
        "torch_work": lambda: TorchWork(work),
        "torch_work_wait": TorchWork(work).wait,
        "checked": lambda: group._checked("all_reduce", [[tensor]]),
    }
    return {key: _local_us(call) for key, call in calls.items()}


def part_profile(dist: Any, cfg: dict) -> dict:
    """Where the adapter's time goes, all_reduce of ``cfg["profile_bytes"]`` (every rank runs the
    same calls)."""
    import torch

    tensor = torch.zeros(max(1, cfg.get("profile_bytes", 4) // 4))
    own_api = _own_api_group(dist)
    try:
        layers = _profile_layers(dist, own_api, tensor)
        samples: dict[str, list[float]] = {name: [] for name in layers}
        for index in range(cfg["profile_rounds"]):
            order = list(layers) if index % 2 == 0 else list(reversed(layers))
            for name in order:
                dist.barrier()
                samples[name].append(median_call_us(layers[name], cfg["profile_reps"]))
        dist.barrier()
        calls = cfg["profile_reps"] * 5
        rows = cprofile_rows(lambda: dist.all_reduce(tensor), calls)
        funcol_rows = cprofile_rows(layers[ASYNC_LAYERS[1]], calls)
        dist.barrier()
    finally:
        own_api.destroy_process_group()
    return {
        "world": dist.get_world_size(),
        "bytes": tensor.numel() * 4,
        "layers": {name: statistics.median(values) for name, values in samples.items()},
        "pieces": _profile_pieces(dist, tensor),
        "cprofile": rows,
        "cprofile_funcol": funcol_rows,
    }


RANK_PARTS = {
    "ddp": part_ddp,
    "allreduce": part_allreduce,
    "funcol": part_funcol,
    "profile": part_profile,
}


def rank_main(kind: str, parts: list[str], cfg: dict, out: str) -> None:
    """One rank (env:// variables set by :func:`launch`): run ``parts``, write JSON to ``out``."""
    import torch

    torch.set_num_threads(1)  # two ranks on two cores
    if kind == "native":
        import pyc10d as dist

        dist.init_process_group(timeout=timedelta(seconds=120))
    else:
        import torch.distributed as dist

        dist.init_process_group(kind, timeout=timedelta(seconds=120))
    result: dict[str, Any] = {
        "backend": str(dist.get_backend()),
        "pyc10d_loaded": "pyc10d" in sys.modules,
    }
    cfg = {**cfg, "kind": kind}
    try:
        for part in parts:
            result[part] = RANK_PARTS[part](dist, cfg)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    Path(out).write_text(json.dumps(result))


# ==== the launcher =============================================================================


def _rank_env(kind: str, rank: int, port: int, world: int) -> dict[str, str]:
    extra = {"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"} if kind == "gloo" else {}  # no pyc10d
    return rank_env(rank, world, port, extra)


def launch(kind: str, parts: list[str], cfg: dict, world: int = WORLD) -> list[dict]:
    """Run ``parts`` on ``world`` fresh ranks of ``kind``; every rank's JSON result."""
    with tempfile.TemporaryDirectory(prefix="torch_backend_bench-") as name:
        tmp = Path(name)
        port = free_port()
        command = [sys.executable, __file__, "--rank-of", kind, "--parts", *parts]
        command += ["--config", json.dumps(cfg)]
        commands = [
            (
                [*command, "--result", str(tmp / f"rank{rank}.json")],
                _rank_env(kind, rank, port, world),
            )
            for rank in range(world)
        ]
        run_processes(commands, tmp, cfg["timeout"], f"{kind} launch")
        return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(world)]


def slowest(results: list[dict], part: str) -> dict:
    """Per key of ``part``, the slowest rank's value (DDP: also the params and checksums)."""
    first = results[0][part]
    merged = {
        key: max(r[part][key] for r in results)
        for key in first
        if key not in ("params", "checksum", "buckets")
    }
    for key in ("params", "checksum", "buckets"):
        if key in first:
            merged[key] = first[key]
    return merged


def run_rounds(cfg: dict, only: list[str], log: Callable[[str], None]) -> dict[str, list[dict]]:
    """``cfg["rounds"]`` rounds of one launch per kind, alternating order; the parts in
    ``only`` (kinds with none of them are skipped)."""
    parts = {kind: [p for p in PARTS[kind] if p in only] for kind in KINDS}
    kinds = tuple(kind for kind in KINDS if parts[kind])
    rounds: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for index in range(cfg["rounds"]):
        order = kinds if index % 2 == 0 else tuple(reversed(kinds))
        for kind in order:
            start = time.perf_counter()
            results = launch(kind, parts[kind], cfg)
            if results[0]["pyc10d_loaded"] != (kind != "gloo"):
                raise SystemExit(f"{kind} ranks: pyc10d loaded = {results[0]['pyc10d_loaded']}")
            rounds[kind].append({part: slowest(results, part) for part in parts[kind]})
            log(f"round {index + 1}/{cfg['rounds']} {kind}: {time.perf_counter() - start:.1f} s")
    return rounds


# ==== the report ===============================================================================


def _series(rounds: dict, kind: str, part: str, key: str) -> list[float]:
    return [entry[part][key] for entry in rounds[kind]]


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _ms_cpu(wall: list[float], cpu: list[float]) -> str:
    """Median wall ms (median CPU ms)."""
    return f"{statistics.median(wall) * 1e3:.1f} ({statistics.median(cpu) * 1e3:.1f})"


def table_ddp(rounds: dict, cfg: dict) -> list[str]:
    """Part a: step times and the gloo / pyc10d ratio."""
    gloo, ours = (_series(rounds, k, "ddp", "step") for k in ("gloo", "pyc10d"))
    ratio = paired(lambda g, p: g / p, gloo, ours)
    gloo_cpu, ours_cpu = (_series(rounds, k, "ddp", "step_cpu") for k in ("gloo", "pyc10d"))
    cpu_ratio = paired(lambda g, p: g / p, gloo_cpu, ours_cpu)
    params = rounds["pyc10d"][0]["ddp"]["params"]
    sums = [entry["ddp"]["checksum"] for k in ("gloo", "pyc10d") for entry in rounds[k]]
    spread = max(abs(s[1] - sums[0][1]) / abs(sums[0][1]) for s in sums)
    lines = [
        f"### a. torch DDP training step: {params / 1e6:.2f}M-parameter MLP "
        f"({IN_FEATURES}-{WIDTH}x{HIDDEN_LAYERS + 1}-{CLASSES}), batch {cfg['batch']} per rank, "
        "SGD\n",
        "ms per step (in parentheses: CPU ms of the whole rank process, all its threads, "
        "which other processes on a busy machine disturb much less):\n",
        "| backend | DDP step | compute-only step | exposed (step - compute) "
        "| DDP's bucket allreduces alone |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in ("gloo", "pyc10d"):
        series = {key: _series(rounds, kind, "ddp", key) for key in rounds[kind][0]["ddp"]}
        cells = [_ms_cpu(series[key], series[f"{key}_cpu"]) for key in ("step", "compute")]
        exposed = [
            paired(lambda s, c: s - c, series[step], series[compute]) * 1e3
            for step, compute in (("step", "compute"), ("step_cpu", "compute_cpu"))
        ]
        cells.append(f"{exposed[0]:.1f} ({exposed[1]:.1f})")
        cells.append(_ms_cpu(series["comm"], series["comm_cpu"]))
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    buckets = {k: rounds[k][0]["ddp"]["buckets"] for k in ("gloo", "pyc10d")}
    mib = {k: " + ".join(f"{n / (1 << 20):.1f}" for n in v) for k, v in buckets.items()}
    lines += [
        "",
        f"**gloo / pyc10d = {ratio:.2f}x** per step (paired median over rounds; target >= "
        f"{TARGETS['ddp']}x: {_verdict(ratio >= TARGETS['ddp'])}). Per round: "
        + ", ".join(f"{g / p:.2f}x" for g, p in zip(gloo, ours, strict=True))
        + f". In CPU time per step, gloo / pyc10d = {cpu_ratio:.2f}x. Same training: trained "
        f"weights' |w| sums agree to {spread:.1e} (relative) across "
        f"every launch of both backends. DDP's buckets (MiB, reduction order): gloo {mib['gloo']}"
        f", pyc10d {mib['pyc10d']}. The three tasks are interleaved step by step, a barrier "
        "before each.",
    ]
    return lines


def table_allreduce(rounds: dict) -> list[str]:
    """Part b: all_reduce latency of the three kinds, and the adapter's overhead."""
    lines = [
        "### b. `dist.all_reduce(t)` latency, float32, back to back\n",
        "| size | gloo µs | pyc10d adapter µs | pyc10d own API µs | adapter - own API µs, "
        "separate launches | adapter - own API µs, same process interleaved | gloo / adapter |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for nbytes in ALLREDUCE_SIZES:
        gloo, adapter, native = (_series(rounds, kind, "allreduce", str(nbytes)) for kind in KINDS)
        apart = paired(lambda a, n: a - n, adapter, native)
        same = statistics.median(_series(rounds, "pyc10d", "allreduce", f"own-api-diff:{nbytes}"))
        verdicts.append(
            f"{human(nbytes)} {_verdict(apart <= TARGETS['overhead_us'])} / "
            f"{_verdict(same <= TARGETS['overhead_us'])}"
        )
        lines.append(
            f"| {human(nbytes)} | {statistics.median(gloo):.0f} | "
            f"{statistics.median(adapter):.0f} | {statistics.median(native):.0f} | "
            f"{apart:+.1f} | {same:+.1f} | {paired(lambda g, a: g / a, gloo, adapter):.2f}x |"
        )
    per_round = ", ".join(
        f"{a - n:+.0f}"
        for a, n in zip(
            _series(rounds, "pyc10d", "allreduce", "4"),
            _series(rounds, "native", "allreduce", "4"),
            strict=True,
        )
    )
    same_4 = ", ".join(
        f"{d:+.1f}" for d in _series(rounds, "pyc10d", "allreduce", "own-api-diff:4")
    )
    lines += [
        "",
        f"Target, the adapter adds <= {TARGETS['overhead_us']:.0f} µs per call (separate launches"
        f" / same process): {'; '.join(verdicts)}. Separate launches compare each round's "
        f"adapter launch with its own-API launch, seconds apart; 4 B per round: {per_round} µs. "
        f"Same process: in each adapter launch, pyc10d's own default group is also made (over "
        f"torch's store) and {BLOCKS} alternating blocks of `dist.all_reduce` (adapter) and "
        f"`pyc10d.all_reduce` (own API) run back to back; 4 B per launch: {same_4} µs.",
    ]
    return lines


def table_funcol(rounds: dict) -> list[str]:
    """Part c: functional all_reduce + wait_tensor, pyc10d vs gloo."""
    lines = [
        '### c. `funcol.wait_tensor(funcol.all_reduce(t, "sum", group))` latency\n',
        "| size | gloo µs | pyc10d µs | pyc10d / gloo | target (<= 1.5x) |",
        "|---|---:|---:|---:|---|",
    ]
    for nbytes in FUNCOL_SIZES:
        gloo, ours = (_series(rounds, kind, "funcol", str(nbytes)) for kind in ("gloo", "pyc10d"))
        ratio = paired(lambda p, g: p / g, ours, gloo)
        lines.append(
            f"| {human(nbytes)} | {statistics.median(gloo):.0f} | {statistics.median(ours):.0f} | "
            f"{ratio:.2f}x | {_verdict(ratio <= TARGETS['funcol'])} |"
        )
    return lines


ADAPTER_FILES = ("torch_backend/", "core/reduce_op.py", "process_group/options.py")


def _cprofile_table(rows: list, what: str, adapter_only: bool) -> list[str]:
    """A cProfile table: the adapter's own functions, or the top 10 of everything."""
    if adapter_only:
        rows = [row for row in rows if any(part in row[0] for part in ADAPTER_FILES)]
        title = f"cProfile of {what}: the adapter's functions and what they call in pyc10d's "
        title += "option and ReduceOp code"
    else:
        rows = rows[:10]
        title = f"cProfile of {what}: top 10 functions by own time"
    lines = [
        "",
        f"{title} (µs per call, cProfile's own overhead included, so small functions look "
        "bigger than they are):\n",
        "| function | own µs | cumulative µs | calls per call |",
        "|---|---:|---:|---:|",
    ]
    return lines + [f"| `{n}` | {own:.2f} | {cum:.2f} | {c} |" for n, own, cum, c in rows]


def _funcol_sentence(lay: dict) -> str:
    """What the funcol rows of the profile say."""
    funcol, inline = lay[ASYNC_LAYERS[1]], lay[ASYNC_LAYERS[2]]
    sync, async_ = lay[CHAIN[1]], lay[ASYNC_LAYERS[0]]
    text = (
        f"Functional collectives: `funcol.all_reduce` + `wait_tensor` takes {funcol:.0f} µs, "
        f"against {sync:.0f} µs for `group.allreduce(...).wait()` with asyncOp=False and "
        f"{async_:.0f} µs with asyncOp=True (funcol's: the engine wakes a worker thread, then "
        f"the caller waits). Most of the gap is torch's own funcol machinery, which Gloo pays as "
        f"well (a Python autograd wrapper around each op, `_ops.redispatch`, pytree, "
        f"AsyncCollectiveTensor; see its cProfile below). "
    )
    if funcol > inline:
        return text + (
            f"Run by the waiting thread instead (what-if) the funcol call takes {inline:.0f} µs: "
            f"about {funcol - inline:.0f} µs per call is the hand-off to pyc10d's worker thread "
            f"and back (notify the worker, which needs the GIL the caller holds through torch's "
            f"funcol Python code; then wake the waiter)."
        )
    return text + (
        f"Run by the waiting thread instead (what-if) it takes {inline:.0f} µs, no faster: "
        f"here the worker hand-off is not what costs."
    )


def where_the_time_goes(profile: dict) -> str:
    """The summary paragraph, with this run's numbers."""
    lay, pcs = profile["layers"], profile["pieces"]
    steps = [lay[CHAIN[i]] - lay[CHAIN[i + 1]] for i in range(len(CHAIN) - 1)]
    names = [
        "torch's `dist.all_reduce` wrapper",
        "`ProcessGroupPyc10d.allreduce`'s own code",
        "the option conversion `from_torch`",
        "the `TorchWork` wrapper",
    ]
    largest = names[max(range(len(steps)), key=steps.__getitem__)]
    setting = (
        "a world-1 pyc10d launch (no peer to wait for: each call's time is the Python path "
        "itself, with far less noise than a 2-rank measurement on this busy machine)"
        if profile["world"] == 1
        else "rank 0 of a world-2 pyc10d launch (every call a real allreduce)"
    )
    return (
        f"**Where the time goes.** Measured in {setting}, in interleaved blocks, "
        f"{human(profile['bytes'])} tensor: "
        f"`dist.all_reduce` through the adapter takes {lay[CHAIN[0]]:.1f} µs and pyc10d's own "
        f"`all_reduce` in the same process {lay[OWN_API]:.1f} µs, so the adapter adds "
        f"{lay[CHAIN[0]] - lay[OWN_API]:+.1f} µs per call. Layer by layer (each row of the table "
        f"minus the next): {names[0]} (`_check_single_tensor`, `_rank_not_in_group`, a torch "
        f"`AllreduceOptions`, `_get_default_group`, the coalescing check, the "
        f"`_exception_logger` decorator; Gloo pays it too) {steps[0]:+.1f} µs; {names[1]} "
        f"(`_checked` with `_require_cpu` and `_first_tensor`: {pcs['checked']:.1f} µs alone) "
        f"{steps[1]:+.1f} µs; {names[2]} {steps[2]:+.1f} µs ({pcs['from_torch']:.1f} µs alone; "
        f"a conversion from scratch, which options that cannot be cached pay, costs a pyc10d "
        f"`AllreduceOptions()` {pcs['ours']:.1f} µs, whose `__init__` builds a `ReduceOp(SUM)` "
        f"that is then replaced, plus `core/reduce_op.py:to_reduce_op` of torch's ReduceOp "
        f"{pcs['to_reduce_op']:.1f} µs: `_torch_reduce_op_types()` looked up again, `op.op.name` "
        f"through pybind, `RedOpType[...]`, a ReduceOp via `__new__` + `__setstate__`); "
        f"{names[3]} {steps[3]:+.1f} µs ({pcs['torch_work']:.1f} µs alone: torch's "
        f"`Work.__init__` through pybind). The largest adapter layer here: {largest}. The rest "
        f"of the call is pyc10d's engine, `pg.allreduce(...).wait()` {lay[CHAIN[4]]:.1f} µs "
        f"(`_collective`, `check_allreduce`, `_run`, the issue order, a Deadline), which pyc10d's "
        f"own API pays as well (its module-level checks add "
        f"{lay[OWN_API] - lay[CHAIN[4]]:+.1f} µs on top). " + _funcol_sentence(lay)
    )


def profile_section(profile: dict) -> list[str]:
    """The adapter's per-call path: summary, layers, pieces, cProfile."""
    layers = profile["layers"]
    lines = [
        f"### Where the adapter's per-call time goes ({human(profile['bytes'])} all_reduce)\n",
        where_the_time_goes(profile),
        "",
        "The synchronous path, outermost first; each row runs the next row's code plus one layer "
        f"(world size {profile['world']}; median µs per call over interleaved blocks):\n",
        "| call | µs | minus the next row |",
        "|---|---:|---:|",
    ]
    for index, name in enumerate(CHAIN):
        below = f"{layers[name] - layers[CHAIN[index + 1]]:+.1f}" if index + 1 < len(CHAIN) else ""
        lines.append(f"| `{name}` | {layers[name]:.1f} | {below} |")
    lines.append(
        f"| reference: `{OWN_API}` | {layers[OWN_API]:.1f} | adapter - this: "
        f"{layers[CHAIN[0]] - layers[OWN_API]:+.1f} |"
    )
    sync = layers[CHAIN[1]]
    lines += [
        "",
        "The asynchronous paths:\n",
        "| call | µs | minus `group.allreduce(...)` with asyncOp=False |",
        "|---|---:|---:|",
    ]
    lines += [f"| {n} | {layers[n]:.1f} | {layers[n] - sync:+.1f} |" for n in ASYNC_LAYERS]
    lines += ["", "Pieces alone (no communication; best-of-5 mean µs):\n", "| piece | µs |"]
    lines += ["|---|---:|"] + [f"| {PIECES[k]} | {us:.2f} |" for k, us in profile["pieces"].items()]
    lines += _cprofile_table(profile["cprofile"], "`dist.all_reduce(t)`", adapter_only=True)
    lines += _cprofile_table(profile["cprofile"], "`dist.all_reduce(t)`", adapter_only=False)
    lines += _cprofile_table(profile["cprofile_funcol"], "funcol all_reduce + wait_tensor", False)
    return lines


def report(rounds: dict, profile: dict | None, cfg: dict, meta: dict) -> str:
    """The results file: command, date, the three tables and the profile."""
    lines = [
        "# pyc10d as a torch.distributed backend vs Gloo\n",
        f"Made by `{meta['command']}` on {meta['date']} at commit {meta['code']}"
        f"{' (**pyc10d changed during the run**)' if meta['code_changed'] else ''} "
        f"(torch {meta['torch']}, "
        f"{os.cpu_count()} CPU cores; load average {meta['load_before']:.1f} before, "
        f"{meta['load_after']:.1f} after; {meta['seconds']:.0f} s). World size {WORLD}, "
        f"one thread per rank, {cfg['rounds']} round(s) of fresh launches per backend in "
        "alternating order; each time is the slowest rank's median; ratios and differences "
        "are paired by round, then the median over rounds.\n",
    ]
    present = set(rounds["gloo"][0]) if rounds.get("gloo") else set()  # --rounds 0: none
    if "ddp" in present:
        lines += [*table_ddp(rounds, cfg), ""]
    if "allreduce" in present:
        lines += [*table_allreduce(rounds), ""]
    if "funcol" in present:
        lines += [*table_funcol(rounds), ""]
    if profile is not None:
        lines += [*profile_section(profile), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--rank-of`` and friends are the launcher's, for the ranks)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke run")
    parser.add_argument("--rounds", type=int, help="launches per backend (default 8; quick 1)")
    parser.add_argument("--steps", type=int, help="timed DDP steps per launch (default 15)")
    parser.add_argument("--batch", type=int, help="DDP samples per rank per step (default 8)")
    parser.add_argument("--reps", type=int, help="timed calls per small size (default 2000)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS["gloo"],
        default=list(PARTS["gloo"]),
        help="measure only these parts (default: all)",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the profile launch")
    parser.add_argument(
        "--profile-world",
        type=int,
        choices=(1, 2),
        default=1,
        help="world size of the profile launch (default 1: no peer to wait for, so the "
        "per-call CPU cost of each layer, with little noise; 2: real allreduces)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"markdown results file (default {DEFAULT_OUTPUT}; none with --quick)",
    )
    parser.add_argument(
        "--profile-bytes", type=int, default=4, help="tensor size of the profile (default 4)"
    )
    parser.add_argument("--raw", type=Path, help="also write every measurement to this JSON file")
    parser.add_argument("--rank-of", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--parts", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def config_of(args: argparse.Namespace) -> dict:
    """FULL or QUICK, with the command line's overrides."""
    cfg = dict(QUICK if args.quick else FULL, profile_bytes=args.profile_bytes)
    for key in ("rounds", "steps", "batch", "reps"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    return cfg


def main(argv: list[str] | None = None) -> None:
    """Run every round and the profile; print the report and write it to ``--output``."""
    args = parse_args(argv)
    if args.rank_of:
        rank_main(args.rank_of, args.parts, json.loads(args.config), args.result)
        return
    import torch

    cfg = config_of(args)
    started, load_before, code_before = time.perf_counter(), os.getloadavg()[0], code_state()
    rounds = run_rounds(cfg, args.only, lambda line: print(line, file=sys.stderr, flush=True))
    profile = None
    if not args.no_profile:
        try:
            profile = launch("pyc10d", ["profile"], cfg, args.profile_world)[0]["profile"]
        except SystemExit as failure:  # keep the rounds' results
            print(f"profile launch failed, report without it: {failure}", file=sys.stderr)
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "code": code_before,
        "code_changed": code_state() != code_before,
        "seconds": time.perf_counter() - started,
    }
    if args.raw is not None:
        raw = {"rounds": rounds, "profile": profile, "cfg": cfg, "meta": meta}
        args.raw.write_text(json.dumps(raw, indent=1))
    text = report(rounds, profile, cfg, meta)
    print(text)
    output = args.output if args.output is not None or args.quick else DEFAULT_OUTPUT
    if output is not None:
        output.write_text(text)
        print(f"(written to {output})", file=sys.stderr)


if __name__ == "__main__":
    main()
