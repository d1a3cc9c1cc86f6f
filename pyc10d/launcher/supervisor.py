"""Run one node's worker group: start, watch, restart on failure, stop, report (torchrun's agent).

Exit codes of :func:`run`: 0 when every worker exits 0; 1 when a worker fails and no restart is
left (torchrun: 1 too, from its uncaught ``ChildFailedError``); 124 when ``--timeout`` passes
(as ``timeout(1)``); ``128 + signum`` when the launcher is stopped by a signal.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .config import LaunchConfig, pick_free_port, worker_env
from .output import STDERR
from .report import failure_report
from .worker import Worker, describe_exit, signal_name

EXIT_FAILURE = 1
EXIT_TIMEOUT = 124
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")  # torchrun's default set
KILL_WAIT_SECONDS = 5.0
STOP_POLL_SECONDS = 0.02


def _say(text: str) -> None:
    STDERR.print(f"pyc10d-run: {text}")


class SignalRecorder:
    """Records the signals the launcher receives (handlers only work in the main thread)."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)

    @contextmanager
    def installed(self) -> Iterator[SignalRecorder]:
        """Install the handlers for torchrun's signals; restore the previous ones on exit."""
        previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for name in FORWARDED_SIGNALS:
                signum = getattr(signal, name, None)
                if signum is not None:
                    previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]


@dataclass
class Outcome:
    """How an attempt ended: ``ok``, ``failed`` (``failures``), ``timeout`` or ``signal``."""

    kind: str
    failures: list[Worker] = field(default_factory=list)
    running: list[Worker] = field(default_factory=list)
    signum: int = 0


def start_group(config: LaunchConfig, restart_count: int, master_port: int) -> list[Worker]:
    """Start this node's ``nproc_per_node`` workers; on a start error, stop those started."""
    workers: list[Worker] = []
    try:
        for local_rank in range(config.nproc_per_node):
            env = worker_env(config, local_rank, restart_count, master_port)
            workers.append(Worker(config, local_rank, config.command, env))
    except BaseException:
        stop_group(workers, signal.SIGKILL, 0.0, SignalRecorder())
        raise
    return workers


def watch_group(
    config: LaunchConfig, workers: list[Worker], deadline: float | None, signals: SignalRecorder
) -> Outcome:
    """Poll every ``monitor_interval`` until all succeed, one fails, time runs out or a signal."""
    while True:
        if signals.received:
            return Outcome("signal", signum=signals.received[0])
        codes = [w.exitcode for w in workers]
        failures = [w for w, code in zip(workers, codes, strict=True) if code not in (None, 0)]
        if failures:
            return Outcome("failed", failures=failures)
        if all(code == 0 for code in codes):
            return Outcome("ok")
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return Outcome("timeout", running=[w for w in workers if w.running])
        wait = (
            config.monitor_interval
            if deadline is None
            else min(config.monitor_interval, deadline - now)
        )
        time.sleep(max(wait, 0.0))


def stop_group(
    workers: list[Worker], signum: int, grace: float, signals: SignalRecorder
) -> list[Worker]:
    """Signal the running workers' groups, SIGKILL those alive after ``grace`` seconds.

    A further signal to the launcher cuts the grace short. Afterwards every worker's process
    group gets a SIGKILL (no orphans) and its output is drained. Returns the workers signaled.
    """
    running = [w for w in workers if w.running]
    for worker in running:
        worker.signal_group(signum)
    seen = len(signals.received)
    end = time.monotonic() + grace
    while any(w.running for w in running) and time.monotonic() < end:
        if len(signals.received) > seen:
            break
        time.sleep(STOP_POLL_SECONDS)
    for worker in running:
        if worker.running:
            worker.signal_group(signal.SIGKILL)
    for worker in running:
        worker.wait(KILL_WAIT_SECONDS)
    for worker in workers:
        worker.signal_group(signal.SIGKILL)  # whatever the workers started and left behind
    for worker in workers:
        worker.close_output()
    return running


def _ranks(workers: list[Worker]) -> str:
    return ", ".join(str(w.rank) for w in sorted(workers, key=lambda w: w.rank))


def _omp_notice(config: LaunchConfig) -> None:
    if "OMP_NUM_THREADS" in config.extra_env:
        STDERR.print(
            "\n*****************************************\n"
            "Setting OMP_NUM_THREADS environment variable for each process to be "
            f"{config.extra_env['OMP_NUM_THREADS']} in default, to avoid your system being "
            "overloaded, please further tune the variable for optimal performance in "
            "your application as needed. \n"
            "*****************************************"
        )


def run(config: LaunchConfig) -> int:
    """Run the worker group to completion, restarting it up to ``max_restarts`` times."""
    _omp_notice(config)
    deadline = None if config.timeout is None else time.monotonic() + config.timeout
    with SignalRecorder().installed() as signals:
        for attempt in range(config.max_restarts + 1):
            if signals.received:  # stopped while the previous attempt was shutting down
                return 128 + signals.received[0]
            port = config.master_port
            if port is None:
                port = pick_free_port(config.master_addr)
            try:
                workers = start_group(config, attempt, port)
            except OSError as exc:
                _say(f"could not start the workers: {exc}")
                return EXIT_FAILURE
            outcome = watch_group(config, workers, deadline, signals)
            if outcome.kind == "ok":
                stop_group(workers, signal.SIGTERM, config.shutdown_timeout, signals)
                return 0
            if outcome.kind == "signal":
                name = signal_name(outcome.signum)
                running = [w for w in workers if w.running]
                _say(f"received {name}; forwarding it to {len(running)} running worker(s)")
                stop_group(workers, outcome.signum, config.shutdown_timeout, signals)
                return 128 + outcome.signum
            if outcome.kind == "timeout":
                _say(
                    f"timed out after {config.timeout:g} s (--timeout): ranks "
                    f"{_ranks(outcome.running)} still running; killing all workers"
                )
                stop_group(workers, signal.SIGTERM, config.shutdown_timeout, signals)
                return EXIT_TIMEOUT
            others = sum(1 for w in workers if w.running)
            for worker in outcome.failures:
                _say(
                    f"rank {worker.rank} (local_rank {worker.local_rank}) "
                    f"{describe_exit(worker.exitcode or 0)}; stopping {others} other worker(s)"
                )
            stop_group(workers, signal.SIGTERM, config.shutdown_timeout, signals)
            if attempt < config.max_restarts:
                _say(
                    f"worker group failed; restarting it (restart {attempt + 1} of "
                    f"{config.max_restarts})"
                )
                continue
            STDERR.print(failure_report(config.entrypoint, outcome.failures))
            return EXIT_FAILURE
    return EXIT_FAILURE  # not reached: the last attempt returns
