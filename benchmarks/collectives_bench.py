"""Collectives: pyc10d vs Gloo (torch.distributed) vs MPICH (mpi4py), each in its own processes.

Every backend runs in fresh processes of its own (one library per process), round after round;
the order rotates each round (round 1: pyc10d, gloo, mpich; round 2: gloo, mpich, pyc10d; ...)
so that the machine's load drifts hit all alike. A round of a backend is one job: its ``W`` ranks
start, time every (collective, size) cell and exit. Timed, float32, back to back:

- pyc10d (``import pyc10d as dist``, env://) and Gloo (``torch.distributed``, env://; pyc10d is
  not even loaded there, ``TORCH_DEVICE_BACKEND_AUTOLOAD=0``) through the module API users call:
  ``dist.all_reduce(t)``, ``dist.all_reduce(t, async_op=True).wait()``, ``dist.broadcast(t, 0)``,
  ``dist.all_gather_into_tensor``, ``dist.reduce_scatter_tensor``, ``dist.all_to_all_single``;
- MPICH, launched by ``mpiexec -n W`` (hydra) running ``benchmarks/_collectives_rank.py``:
  mpi4py's buffer API on numpy views of the same torch tensors, ``comm.Allreduce(MPI.IN_PLACE,
  t.numpy())``, ``Bcast``, ``Allgather``, ``Reduce_scatter_block``, ``Alltoall`` (no async row).

In a cell, warm-up calls estimate one call, then 5 blocks of back-to-back calls (about
``--budget`` seconds each, at least 3 and at most 2000 calls: MPICH, which busy-polls, takes
milliseconds per call at world 4 on two cores, so it gets few calls); a block's time per call is
the slowest rank's, the cell keeps the median block; the table shows the median over rounds, and
the ratios (speedup: the other library's time / pyc10d's, > 1 = pyc10d faster) are paired by
round, then the median over rounds. Sizes are nccl-tests': the allreduce / broadcast tensor,
allgather's output, reduce_scatter's input, alltoall's input; bus bandwidth uses nccl-tests'
factors. ``--transport tcp`` runs pyc10d with ``PYC10D_TRANSPORT=tcp`` (its cross-host path,
here on one host) against Gloo, without MPICH.

The MPICH column needs mpi4py and an MPI library; otherwise it is skipped with a line saying why.
Installed here (Ubuntu 22.04, MPICH 4.0.2, mpi4py 4.1.2) with::

    apt-get install mpich
    pip install mpi4py            # into the venv
    # mpi4py's wheel loads libmpi.so.12, which Debian's MPICH names libmpich.so.12:
    ln -s /usr/lib/x86_64-linux-gnu/libmpich.so.12 /usr/lib/x86_64-linux-gnu/libmpi.so.12
    ldconfig

    python benchmarks/collectives_bench.py [--quick] [--worlds 2 4] [--transport auto|tcp]
        [--sizes 4 1024 ...] [--max-bytes N] [--ops allreduce ...] [--rounds 3]
        [--output FILE.md] [--plot FILE.png] [--raw FILE.json] [--no-mpich]

Without ``--quick`` the tables go to ``benchmarks/results/collectives.md`` (``--transport tcp``:
``collectives_tcp.md``) and the plot (matplotlib: the ``bench`` extra) next to it as ``.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

from _collectives_rank import ASYNC_OPS, OPS
from _common import RESULTS, code_state, free_port, human, paired, rank_env, run_processes

WORKER = Path(__file__).with_name("_collectives_rank.py")
DEFAULT_SIZES = [4, 64, 1024, 16 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
QUICK_SIZES = [4, 16 << 10, 1 << 20]
CELL = {"warmup": 3, "repeats": 5, "min_iters": 3, "max_iters": 2000, "op_timeout_s": 600}
NO_PYC10D = {"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}  # torch must not load pyc10d's entry point
LABELS = {"pyc10d": "pyc10d", "gloo": "Gloo", "mpich": "MPICH"}


def bus_factor(collective: str, world: int) -> float:
    """nccl-tests' bus-bandwidth factor: bus GB/s = size / time * factor."""
    if collective.startswith("allreduce"):
        return 2 * (world - 1) / world
    if collective == "broadcast":
        return 1.0
    return (world - 1) / world


# ==== MPI availability =========================================================================

_MPI_PROBE = (
    "import mpi4py; mpi4py.rc.initialize = False; from mpi4py import MPI; "
    "print(' '.join(MPI.Get_library_version().split()[:3]))"
)


def mpi_status() -> tuple[str | None, str]:
    """(why the MPICH column is skipped, or None; the MPI library's version line)."""
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install mpi4py)", ""
    if shutil.which("mpiexec") is None:
        return "no mpiexec on PATH (apt-get install mpich)", ""
    probe = subprocess.run(
        [sys.executable, "-c", _MPI_PROBE], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"mpi4py cannot load an MPI library ({last})", ""
    return None, probe.stdout.strip()


# ==== jobs =====================================================================================


def _commands(backend: str, world: int, cfg: dict, transport: str, out: Path) -> list:
    """The (argv, env) of the processes of one job: W env:// ranks, or one mpiexec."""
    argv = [sys.executable, str(WORKER), "--backend", backend, "--config", json.dumps(cfg)]
    argv += ["--result", str(out)]
    if backend == "mpich":
        env = dict(os.environ, OMP_NUM_THREADS="1", **NO_PYC10D)
        return [(["mpiexec", "-n", str(world), *argv], env)]
    extra = NO_PYC10D if backend == "gloo" else {"PYC10D_TRANSPORT": transport}
    port = free_port()
    return [(argv, rank_env(rank, world, port, extra)) for rank in range(world)]


def run_job(backend: str, world: int, cfg: dict, transport: str) -> dict:
    """One fresh job of ``backend`` at ``world`` ranks; rank 0's result."""
    with tempfile.TemporaryDirectory(prefix="collectives_bench-") as name:
        out = Path(name) / "result.json"
        commands = _commands(backend, world, cfg, transport, out)
        run_processes(commands, Path(name), cfg["job_timeout_s"], f"{backend} world {world}")
        result = json.loads(out.read_text())
    if result["pyc10d_loaded"] != (backend == "pyc10d"):
        raise SystemExit(f"{backend} ranks: pyc10d loaded = {result['pyc10d_loaded']}")
    if backend == "pyc10d" and transport == "tcp" and result.get("arena"):
        raise SystemExit("PYC10D_TRANSPORT=tcp, yet the ranks used the shared-memory arena")
    return result


def rotation(backends: list[str], index: int) -> list[str]:
    """Round ``index``'s order: the backends rotated by ``index``."""
    shift = index % len(backends)
    return backends[shift:] + backends[:shift]


def run_world(backends: list[str], world: int, cfg: dict, args: argparse.Namespace) -> dict:
    """``args.rounds`` rounds at ``world`` ranks: {backend: [rank 0's result or None]}."""
    rounds: dict[str, list] = {backend: [] for backend in backends}
    for index in range(args.rounds):
        for backend in rotation(backends, index):
            start = time.perf_counter()
            try:
                result = run_job(backend, world, cfg, args.transport)
            except SystemExit as failure:  # keep the other jobs; the report says so
                print(f"FAILED: {failure}", file=sys.stderr, flush=True)
                result = None
            else:
                result["load"] = os.getloadavg()[0]  # 1-minute load average after the job
            rounds[backend].append(result)
            print(
                f"world {world} round {index + 1}/{args.rounds} {backend}: "
                f"{time.perf_counter() - start:.1f} s, load {os.getloadavg()[0]:.1f}",
                file=sys.stderr,
                flush=True,
            )
    return rounds


# ==== the report ===============================================================================


def series(rounds: dict, backend: str, key: str) -> list[float | None]:
    """Seconds of cell ``key`` of ``backend``, one per round (None: no value that round)."""
    return [r["times"].get(key) if r else None for r in rounds.get(backend, [])]


def median_of(values: list[float | None]) -> float | None:
    """Median of the values present, or None."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(rounds: dict, num: tuple[str, str], den: tuple[str, str]) -> float | None:
    """Paired by round: median of time(``num``) / time(``den``), each a (backend, cell key)."""
    pairs = [
        (a, b)
        for a, b in zip(series(rounds, *num), series(rounds, *den), strict=True)
        if a is not None and b is not None
    ]
    if not pairs:
        return None
    return paired(lambda a, b: a / b, [a for a, _ in pairs], [b for _, b in pairs])


def speedup(rounds: dict, other: str, key: str) -> float | None:
    """Paired by round: median of ``other``'s time / pyc10d's."""
    return ratio(rounds, (other, key), ("pyc10d", key))


def _cells(values: list, fmt: str) -> list[str]:
    return [("—" if v is None else format(v, fmt)) for v in values]


def table(rounds: dict, world: int, ops: list[str], sizes: list[int]) -> list[str]:
    """The markdown table of one world: µs, bus GB/s and speedups per backend."""
    backends = list(rounds)
    others = [b for b in backends if b != "pyc10d"]
    head = [f"{LABELS[b]} µs" for b in backends] + [f"{LABELS[b]} bus GB/s" for b in backends]
    head += [f"vs {LABELS[b]}" for b in others]
    lines = [
        f"### world {world}\n",
        "| collective | size | " + " | ".join(head) + " |",
        "|---|---:|" + "---:|" * len(head),
    ]
    for op in ops:
        for nbytes in sizes:
            key = f"{op}:{nbytes}"
            times = [median_of(series(rounds, b, key)) for b in backends]
            factor = bus_factor(op, world)
            bus = [None if t is None else nbytes / t * factor / 1e9 for t in times]
            ratios = [speedup(rounds, b, key) for b in others]
            row = _cells([None if t is None else t * 1e6 for t in times], ",.1f")
            row += _cells(bus, ".2f") + [("—" if r is None else f"{r:.2f}x") for r in ratios]
            lines.append(f"| {op} | {human(nbytes)} | " + " | ".join(row) + " |")
    return lines


def failures(results: dict) -> list[str]:
    """One line per failed job."""
    return [
        f"- world {world}: {backend} failed in round(s) "
        + ", ".join(str(i + 1) for i, r in enumerate(runs) if r is None)
        for world, rounds in results.items()
        for backend, runs in rounds.items()
        if any(r is None for r in runs)
    ]


def header(args: argparse.Namespace, meta: dict, cfg: dict) -> list[str]:
    """Title, command, machine state and method."""
    title = "pyc10d vs Gloo vs MPICH" if args.transport == "auto" else "pyc10d TCP path vs Gloo"
    mpi = meta["mpi_skip"] or f"{meta['mpi_library']}, mpi4py {meta['mpi4py']}"
    transport = "the TCP transport (`PYC10D_TRANSPORT=tcp`)"
    if args.transport == "auto":
        transport = "the default transport (`PYC10D_TRANSPORT=auto`: shared-memory arena)"
    return [
        f"# Collectives: {title}\n",
        f"Made by `{meta['command']}` on {meta['date']} at commit {meta['code']}"
        f"{' (**pyc10d changed during the run**)' if meta['code_changed'] else ''}; torch "
        f"{meta['torch']}; MPI: {mpi}. {os.cpu_count()} CPU cores, shared with other jobs: "
        f"load average (1 min) {meta['load_before']:.2f} before, {meta['load_after']:.2f} after "
        f"(median {meta['load_median']:.2f} over the jobs); {meta['seconds'] / 60:.1f} min.\n",
        f"pyc10d ran {transport} (ranks reported: {meta['transports']}). Each backend in its own "
        f"fresh processes, {args.rounds} round(s) per world in rotating order, float32, back to "
        f"back; per cell {cfg['repeats']} blocks of {cfg['min_iters']}-{cfg['max_iters']} calls "
        f"(about {cfg['budget_s'] * 1e3:.0f} ms each), time per call = the slowest rank's, "
        "median block; table: median over rounds; speedup = the other library's time / "
        "pyc10d's (> 1: pyc10d faster), paired by round, median over rounds. "
        "`allreduce_async` is `dist.all_reduce(t, async_op=True).wait()` (no MPICH row).\n",
    ]


SMALL_MAX, LARGE_MIN = 16 << 10, 256 << 10  # issue 14's small and large messages


def _fmt(values: dict[int, float | None]) -> str:
    return ", ".join(f"{human(n)} {'—' if v is None else f'{v:.2f}x'}" for n, v in values.items())


def _verdict(values: list[float | None], ok: Callable[[float], bool]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "not measured"
    return "met" if all(ok(v) for v in present) else "**missed**"


def _target_line(text: str, values: dict[int, float | None], limit: float) -> str:
    """One target line: ratios per size, met when every one is at most ``limit``."""
    verdict = _verdict(list(values.values()), lambda v: v <= limit)
    return f"- {text} (target <= {limit}x: {verdict}): {_fmt(values)}"


def _small_targets(rounds: dict, ops: list[str], small: list[int]) -> list[str]:
    """Issue 14's small-message targets, paired by round: (text, numerator, denominator,
    limit) per line, a line only when both sides were measured."""
    wanted = [
        (
            "sync allreduce, pyc10d time / MPICH's",
            ("pyc10d", "allreduce"),
            ("mpich", "allreduce"),
            4.0,
        )
    ]
    wanted.append(
        (
            "pyc10d async / sync allreduce",
            ("pyc10d", "allreduce_async"),
            ("pyc10d", "allreduce"),
            1.3,
        )
    )
    wanted += [
        (f"pyc10d {op} / its allreduce", ("pyc10d", op), ("pyc10d", "allreduce"), 1.5)
        for op in ops
        if not op.startswith("allreduce")
    ]
    lines = []
    for text, (num, num_op), (den, den_op), limit in wanted:
        if {num_op, den_op} <= set(ops) and den in rounds:
            values = {
                n: ratio(rounds, (num, f"{num_op}:{n}"), (den, f"{den_op}:{n}")) for n in small
            }
            lines.append(_target_line(text, values, limit))
    return lines


def targets(rounds: dict, world: int, ops: list[str], sizes: list[int]) -> list[str]:
    """Issue 14's targets at ``world`` (world 2: small / large messages; more: ahead of all)."""
    lines = [f"Issue 14's targets, world {world} (ratios paired by round):\n"]
    if world == 2:
        lines += _small_targets(rounds, ops, [n for n in sizes if n <= SMALL_MAX])
        large = [n for n in sizes if n >= LARGE_MIN]
        for op in ops if "mpich" in rounds else []:
            if op in ASYNC_OPS:
                continue
            values = {n: speedup(rounds, "mpich", f"{op}:{n}") for n in large}
            lines.append(
                f"- {op} >= 256 KiB, pyc10d bus bandwidth / MPICH's (target >= 1: "
                f"{_verdict(list(values.values()), lambda v: v >= 1)}): {_fmt(values)}"
            )
        big = median_of(series(rounds, "pyc10d", f"allreduce:{64 << 20}"))
        if big is not None:
            busbw = (64 << 20) / big * bus_factor("allreduce", world) / 1e9
            lines.append(
                f"- 64 MiB allreduce bus bandwidth {busbw:.2f} GB/s (target >= 8: "
                f"{_verdict([busbw], lambda v: v >= 8)})"
            )
    for other in (b for b in rounds if b != "pyc10d"):
        worst = {
            op: min(
                (v for n in sizes if (v := speedup(rounds, other, f"{op}:{n}")) is not None),
                default=None,
            )
            for op in ops
        }
        shown = ", ".join(f"{op} {v:.2f}x" for op, v in worst.items() if v is not None)
        lines.append(
            f"- lowest speedup vs {LABELS[other]} over sizes, per collective (ahead at "
            f"every size: {_verdict(list(worst.values()), lambda v: v > 1)}): {shown}"
        )
    return lines


def report(results: dict, args: argparse.Namespace, meta: dict, cfg: dict) -> str:
    """The whole markdown report."""
    lines = header(args, meta, cfg)
    lines += failures(results)
    for world, rounds in results.items():
        lines += [*table(rounds, world, cfg["ops"], cfg["sizes"]), ""]
        lines += [*targets(rounds, world, cfg["ops"], cfg["sizes"]), ""]
    return "\n".join(lines)


def plot(results: dict, ops: list[str], sizes: list[int], path: Path) -> None:
    """µs per call against size, one panel per (world, collective), a line per backend."""
    try:
        import matplotlib
    except ImportError:
        print("(matplotlib not installed: no plot; pip install -e '.[bench]')", file=sys.stderr)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    worlds = list(results)
    fig, axes = plt.subplots(
        len(worlds), len(ops), figsize=(3.3 * len(ops), 3.0 * len(worlds)), squeeze=False
    )
    for row, world in enumerate(worlds):
        for col, op in enumerate(ops):
            axis = axes[row][col]
            for backend in results[world]:
                points = [
                    (n, t * 1e6)
                    for n in sizes
                    if (t := median_of(series(results[world], backend, f"{op}:{n}"))) is not None
                ]
                if points:
                    xs, ys = zip(*points, strict=True)
                    axis.plot(xs, ys, marker="o", markersize=3, label=LABELS[backend])
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_title(f"{op}, world {world}", fontsize=9)
            axis.set_xlabel("bytes", fontsize=8)
            axis.set_ylabel("µs per call (lower is better)", fontsize=8)
            axis.yaxis.set_minor_formatter(NullFormatter())
            axis.tick_params(labelsize=7)
            axis.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    print(f"plot saved to {path}", file=sys.stderr)


# ==== main =====================================================================================


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="world 2, 3 sizes, 1 round")
    parser.add_argument("--worlds", type=int, nargs="+", help="default 2 4 (quick: 2)")
    parser.add_argument("--transport", choices=("auto", "tcp"), default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", help="bytes per cell (default 4..64 MiB)")
    parser.add_argument("--max-bytes", type=int, help="drop sizes above this")
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--rounds", type=int, help="fresh jobs per backend (default 3; quick 1)")
    parser.add_argument("--repeats", type=int, help="timed blocks per cell (default 5)")
    parser.add_argument("--budget", type=float, help="seconds per block (default 0.05)")
    parser.add_argument("--no-mpich", action="store_true", help="skip the MPICH column")
    parser.add_argument("--output", type=Path, help="markdown file (none with --quick)")
    parser.add_argument("--plot", type=Path, help="PNG file (default: next to --output)")
    parser.add_argument("--raw", type=Path, help="also write every job's result to this JSON")
    args = parser.parse_args(argv)
    args.worlds = args.worlds or ([2] if args.quick else [2, 4])
    args.rounds = args.rounds or (1 if args.quick else 3)
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    args.sizes = [s for s in sizes if args.max_bytes is None or s <= args.max_bytes]
    if args.output is None and not args.quick:
        args.output = RESULTS / (
            "collectives.md" if args.transport == "auto" else "collectives_tcp.md"
        )
    if args.plot is None and args.output is not None:
        args.plot = args.output.with_suffix(".png")
    return args


def config_of(args: argparse.Namespace) -> dict:
    """What every rank gets: the cells and how to time them."""
    cfg = dict(CELL, ops=args.ops, sizes=args.sizes)
    cfg["repeats"] = args.repeats or (2 if args.quick else CELL["repeats"])
    cfg["budget_s"] = args.budget or (0.02 if args.quick else 0.05)
    cfg["job_timeout_s"] = 900
    return cfg


def main(argv: list[str] | None = None) -> None:
    """Run every round of every world; print the report, write it and the plot."""
    import torch

    args = parse_args(argv)
    cfg = config_of(args)
    backends = ["pyc10d", "gloo"]
    skip, library = ("--no-mpich given", "") if args.no_mpich else mpi_status()
    if args.transport == "tcp":
        skip, library = "not measured in --transport tcp mode", ""
    if skip is None:
        backends.append("mpich")
    else:
        print(f"MPICH column skipped: {skip}", file=sys.stderr)
    started, load_before, code_before = time.perf_counter(), os.getloadavg()[0], code_state()
    results = {world: run_world(backends, world, cfg, args) for world in args.worlds}
    jobs = [r for rounds in results.values() for runs in rounds.values() for r in runs if r]
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        "mpi_skip": None if skip is None else f"MPICH column skipped: {skip}",
        "mpi_library": library,
        "mpi4py": next((r["mpi4py"] for r in jobs if "mpi4py" in r), "?"),
        "transports": ", ".join(sorted({str(r["transport"]) for r in jobs if "transport" in r})),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "load_median": statistics.median([r["load"] for r in jobs] or [0.0]),
        "code": code_before,
        "code_changed": code_state() != code_before,
        "seconds": time.perf_counter() - started,
    }
    text = report(results, args, meta, cfg)
    print(text)
    if args.raw is not None:
        args.raw.write_text(json.dumps({"results": results, "meta": meta, "cfg": cfg}, indent=1))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
        print(f"(written to {args.output})", file=sys.stderr)
    if args.plot is not None:
        plot(results, cfg["ops"], cfg["sizes"], args.plot)


if __name__ == "__main__":
    main()
