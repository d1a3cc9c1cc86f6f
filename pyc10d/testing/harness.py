"""``spawn``: run a function in ``world_size`` fresh processes and collect what each returns.

The parent supervises the ranks: it returns their results in rank order, raises
:class:`RankFailedError` when a rank raises or dies, and :class:`RankTimeoutError` (with the
Python stacks of the stuck ranks) when the timeout passes. Whatever happens, every rank is killed
and reaped, the run's TCPStore server is closed and its temporary directory removed.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

from ..core.timeouts import Deadline, TimeoutLike, to_seconds
from ._rank import run_rank, stack_dump_path
from .context import RankContext
from .errors import RankFailedError, RankTimeoutError

START_METHODS = ("forkserver", "spawn")
FORKSERVER_PRELOAD = ["torch", "pyc10d"]
FAILURE_GRACE_SECONDS = 5.0
STACK_DUMP_WAIT_SECONDS = 0.5
MASTER_ADDR = "127.0.0.1"


def _ephemeral_low(default: int = 32768) -> int:
    """The lowest port the kernel hands out for outgoing connections and ``bind(0)``."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_port(host: str = MASTER_ADDR) -> int:
    """A TCP port that is free on ``host`` now, for a server to bind later.

    It is picked below the kernel's ephemeral range, so the many short-lived connections of
    other tests cannot take it in the meantime (only an explicit bind could).
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(10000, low) if low > 10100 else 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def describe_exit(exitcode: int | None) -> str:
    """How a process ended, e.g. ``exited with code 7`` or ``was killed by signal SIGKILL``."""
    if exitcode is None:
        return "is still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"{-exitcode}"
        return f"was killed by signal {name} (exit code {exitcode})"
    return f"exited with code {exitcode}"


class _Rank:
    """The parent's handle on one rank: its process, result pipe, and outcome once known."""

    def __init__(self, rank: int, process: multiprocessing.process.BaseProcess, conn: Connection):
        self.rank = rank
        self.process = process
        self.conn: Connection | None = conn
        self.outcome: tuple[str, Any] | None = None  # ("ok", value) or ("error", report)
        self.exited = False

    @property
    def failure(self) -> str | None:
        """The failure report of this rank, or None while it has not failed."""
        if self.outcome is not None and self.outcome[0] == "error":
            return self.outcome[1]
        return None

    def read(self) -> None:
        """Receive the rank's report from its pipe (or notice that the pipe closed)."""
        assert self.conn is not None
        try:
            data = self.conn.recv_bytes()
        except (EOFError, OSError):
            self._close_conn()
            return
        self._close_conn()
        try:
            self.outcome = pickle.loads(data)
        except Exception as exc:
            self.outcome = ("error", f"its result could not be unpickled by the parent: {exc!r}")

    def on_exit(self) -> None:
        """Reap the exited process; a rank that exits without a report (or not 0) has failed."""
        self.process.join()
        self.exited = True
        if self.conn is not None and self.conn.poll(0):
            self.read()
        self._close_conn()
        code = self.process.exitcode
        if self.outcome is None:
            text = f"process {describe_exit(code)} without reporting a result (see its stderr)"
            self.outcome = ("error", text)
        elif self.outcome[0] == "ok" and code != 0:
            self.outcome = ("error", f"process returned its result, then {describe_exit(code)}")

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the rank's process only, if it still runs."""
        if not self.exited and self.process.pid is not None:
            try:
                os.kill(self.process.pid, signum)
            except OSError:
                pass

    def kill(self) -> None:
        """SIGKILL the rank's process group (the rank and anything it started) and the rank."""
        pid = self.process.pid
        if pid is None:
            return
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        if self.process.exitcode is None:
            self.process.kill()

    def reap(self) -> None:
        """Join the (killed) process and release its resources."""
        if self.process.pid is not None:
            self.process.join(timeout=10)
        self._close_conn()
        try:
            self.process.close()
        except ValueError:
            pass

    def _close_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _supervise(ranks: list[_Rank], timeout: float, tmpdir: str) -> list[Any]:
    """Wait for every rank; return their results or raise the failure/timeout error."""
    deadline = Deadline(timeout)
    grace: Deadline | None = None
    failed: list[_Rank] = []
    while True:
        running = [r for r in ranks if not r.exited]
        limit = deadline if grace is None or deadline.at < grace.at else grace
        if not running or limit.expired():
            break
        _receive(running, limit)
        if _note_failures(ranks, failed) and grace is None:
            grace = Deadline(min(FAILURE_GRACE_SECONDS, deadline.remaining()))
    running = [r for r in ranks if not r.exited]
    if failed:
        raise _failed_error(failed, running, grace)
    if running:
        raise _timeout_error(ranks, running, timeout, tmpdir)
    return [r.outcome[1] for r in ranks if r.outcome is not None]


def _receive(running: list[_Rank], limit: Deadline) -> None:
    """Wait until ``limit`` for the running ranks to exit or report, and take in what came."""
    waiting: dict[Any, _Rank] = {r.process.sentinel: r for r in running}
    waiting.update({r.conn: r for r in running if r.conn is not None})
    ready = wait(list(waiting), limit.remaining())
    # Exits first: on_exit drains the pipe, so a rank's report is never read twice.
    for obj in ready:
        if isinstance(obj, int):
            waiting[obj].on_exit()
    for obj in ready:
        rank = waiting[obj]
        if not isinstance(obj, int) and rank.conn is obj:
            rank.read()


def _note_failures(ranks: list[_Rank], failed: list[_Rank]) -> bool:
    """Append the ranks that failed since the last call to ``failed``; True if there were any."""
    new = [r for r in ranks if r.failure is not None and r not in failed]
    failed.extend(new)
    return bool(new)


def _failed_error(
    failed: list[_Rank], running: list[_Rank], grace: Deadline | None
) -> RankFailedError:
    """RankFailedError listing each failure, first seen first, and the ranks left running."""
    reports = {r.rank: r.failure or "" for r in failed}
    parts = [f"rank {rank} failed:\n{report.rstrip()}" for rank, report in reports.items()]
    if running:
        wait_s = grace.seconds if grace is not None else 0.0
        names = ", ".join(str(r.rank) for r in running)
        parts.append(
            f"rank(s) {names} still running {wait_s:.1f} s after the first failure were killed"
        )
    return RankFailedError("\n\n".join(parts), reports)


def _timeout_error(
    ranks: list[_Rank], running: list[_Rank], timeout: float, tmpdir: str
) -> RankTimeoutError:
    """Ask the stuck ranks for their stacks (SIGUSR1) and build the RankTimeoutError."""
    paths = {r.rank: stack_dump_path(tmpdir, r.rank) for r in running}
    for rank in running:
        rank.signal(signal.SIGUSR1)
    dumps = Deadline(STACK_DUMP_WAIT_SECONDS)
    while not dumps.expired() and not all(_size(p) > 0 for p in paths.values()):
        time.sleep(0.02)
    time.sleep(0.05)  # let a dump that is being written finish
    stacks: dict[int, str] = {}
    for rank in running:
        try:
            with open(paths[rank.rank], errors="replace") as f:
                text = f.read().rstrip()
        except OSError:
            text = ""
        stacks[rank.rank] = _drop_watchdog(text) or "(no stack dump: the rank gave none)"
    stuck = ", ".join(str(r.rank) for r in running)
    done = [str(r.rank) for r in ranks if r.exited]
    finished = f" (rank(s) {', '.join(done)} finished)" if done else ""
    parts = [f"rank(s) {stuck} still running after the timeout of {timeout:g} s{finished}"]
    for rank in running:
        note = "; it returned its result but did not exit" if rank.outcome is not None else ""
        header = f"--- stacks of rank {rank.rank} (pid {rank.process.pid}{note}) ---"
        parts.append(f"{header}\n{stacks[rank.rank]}")
    return RankTimeoutError("\n\n".join(parts), timeout, stacks)


def _drop_watchdog(dump: str) -> str:
    """Remove the harness's own watchdog thread from a faulthandler dump."""
    return "\n\n".join(b for b in dump.split("\n\n") if " in _watch_parent" not in b)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _mp_context(start_method: str) -> multiprocessing.context.BaseContext:
    """The multiprocessing context for ``start_method``; the forkserver preloads torch/pyc10d."""
    if start_method not in START_METHODS:
        raise ValueError(f"start_method must be one of {START_METHODS}, got {start_method!r}")
    ctx = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        # Rank functions usually live in test modules, which import pytest: preload it as well.
        extra = ["pytest"] if "pytest" in sys.modules else []
        ctx.set_forkserver_preload(FORKSERVER_PRELOAD + extra)  # type: ignore[attr-defined]
    return ctx


def spawn(
    fn: Callable[..., Any],
    world_size: int,
    *,
    args: Sequence[Any] = (),
    timeout: TimeoutLike = 60.0,
    start_method: str = "forkserver",
    env: Mapping[str, str] | None = None,
) -> list[Any]:
    """Run ``fn(ctx, *args)`` in ``world_size`` new processes; return their results by rank.

    ``fn`` must be a module-level function (it is pickled by reference) and its return values
    picklable. Raises RankFailedError if a rank raises or dies, RankTimeoutError after
    ``timeout`` seconds; see :mod:`pyc10d.testing`.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    seconds = to_seconds(timeout)
    if seconds <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    mp = _mp_context(start_method)
    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise TypeError(f"spawn needs a module-level function, got {fn!r}: {exc}") from exc

    from ..process_group import flight_recorder
    from ..store import TCPStore

    tmpdir = tempfile.mkdtemp(prefix="pyc10d-spawn-")
    ranks: list[_Rank] = []
    server: TCPStore | None = None
    lifeline_r, lifeline_w = mp.Pipe(duplex=False)
    try:
        server = TCPStore(MASTER_ADDR, 0, is_master=True, wait_for_workers=False)
        common = {
            "MASTER_ADDR": MASTER_ADDR,
            "MASTER_PORT": str(free_port()),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
        }
        # flight-recorder dumps go with the run's temp files, and are off unless asked for (a
        # rank's first dump takes a second: torch's stack symbolizer starting)
        dump_file = flight_recorder.DUMP_FILE_VARS[0]
        common[dump_file] = os.environ.get(dump_file, os.path.join(tmpdir, "fr_trace_rank_"))
        dump_on = flight_recorder.DUMP_ON_FAILURE_VAR
        common[dump_on] = os.environ.get(dump_on, "0")
        # pyc10d's own settings (PYC10D_TRANSPORT...) follow the parent's current environment
        common.update({k: v for k, v in os.environ.items() if k.startswith("PYC10D_")})
        extra = {str(k): str(v) for k, v in (env or {}).items()}
        for rank in range(world_size):
            rank_env = {**common, "RANK": str(rank), "LOCAL_RANK": str(rank), **extra}
            ctx = RankContext(
                rank=rank,
                world_size=world_size,
                tmpdir=tmpdir,
                init_file=os.path.join(tmpdir, "init_file"),
                master_addr=MASTER_ADDR,
                master_port=server.port,
                env=rank_env,
            )
            conn_r, conn_w = mp.Pipe(duplex=False)
            process = mp.Process(
                target=run_rank,
                args=(fn, ctx, tuple(args), conn_w, lifeline_r),
                name=f"pyc10d-rank{rank}",
            )
            ranks.append(_Rank(rank, process, conn_r))
            try:
                process.start()
            finally:
                conn_w.close()
        lifeline_r.close()
        return _supervise(ranks, seconds, tmpdir)
    finally:
        for rank in ranks:
            rank.kill()
        for rank in ranks:
            rank.reap()
        lifeline_r.close()
        lifeline_w.close()
        if server is not None:
            server.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


def world_sizes(*sizes: int) -> Any:
    """A pytest mark running the test once per world size, as its ``world_size`` argument."""
    import pytest  # only the test suite needs pytest

    return pytest.mark.parametrize("world_size", sizes, ids=[f"world_size={n}" for n in sizes])
