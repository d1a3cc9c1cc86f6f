"""Helpers shared by the benchmarks that run each backend in its own fresh processes.

A benchmark script imports this module as ``_common`` (``python benchmarks/x.py`` puts
``benchmarks/`` first on ``sys.path``, in the script and in the rank processes it starts).
"""

from __future__ import annotations

import hashlib
import os
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_env(rank: int, world: int, port: int, extra: dict[str, str] | None = None) -> dict:
    """The environment of rank ``rank`` of a ``world``-rank env:// job on 127.0.0.1:``port``
    (one intra-op thread per rank), plus ``extra``."""
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )
    env.update(extra or {})
    return env


def stop(procs: list[subprocess.Popen]) -> None:
    """Kill and reap every process of ``procs`` still running."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait()


def run_processes(
    commands: list[tuple[list[str], dict]], tmp: Path, timeout: float, what: str
) -> None:
    """Start one process per ``(argv, env)`` of ``commands`` (stderr to ``tmp/proc{i}.err``,
    stdout discarded) and wait for all of them; SystemExit with their stderr tails when one
    fails or they are not all done within ``timeout`` seconds (then all are killed)."""
    procs = []
    try:
        for index, (argv, env) in enumerate(commands):
            with open(tmp / f"proc{index}.err", "w") as err:
                procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err))
        deadline = time.monotonic() + timeout
        codes = [proc.wait(timeout=max(1.0, deadline - time.monotonic())) for proc in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        stop(procs)
    if codes != [0] * len(commands):
        errors = [(tmp / f"proc{i}.err").read_text()[-3000:] for i in range(len(procs))]
        state = f"exit codes {codes}" if codes is not None else f"timed out after {timeout:.0f} s"
        raise SystemExit(f"{what} failed ({state}):\n" + "\n".join(errors))


def human(nbytes: int) -> str:
    """4 B, 16 KiB, 1 MiB."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes // scale} {unit}"
    return f"{nbytes} B"


def paired(fn: Callable[[float, float], float], a: list[float], b: list[float]) -> float:
    """Median over rounds of ``fn(a_round, b_round)``."""
    return statistics.median(fn(x, y) for x, y in zip(a, b, strict=True))


def code_state() -> str:
    """The commit checked out, with the hash of any uncommitted change under pyc10d/ (ranks
    import pyc10d fresh at every launch, so an edit during a run would mix two versions)."""
    root = Path(__file__).resolve().parent.parent

    def git(*command: str) -> str:
        done = subprocess.run(
            ["git", *command], cwd=root, capture_output=True, text=True, timeout=30
        )
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    diff = git("diff", "HEAD", "--", "pyc10d")
    return head + (f"+changes {hashlib.sha1(diff.encode()).hexdigest()[:8]}" if diff else "")


def cprofile_rows(call: Callable[[], object], calls: int) -> list[tuple[str, float, float, int]]:
    """cProfile of ``calls`` calls of ``call``: (function, own µs per call, cumulative µs per
    call, calls per call), largest own time first."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call()
    profiler.disable()
    rows = []
    for (path, line, name), (_cc, ncalls, tottime, cumtime, _callers) in pstats.Stats(
        profiler
    ).stats.items():
        short = f"{Path(path).parent.name}/{Path(path).name}:{line}({name})" if line else name
        rows.append((short, tottime / calls * 1e6, cumtime / calls * 1e6, ncalls // calls))
    rows.sort(key=lambda row: -row[1])
    return rows
