"""Run one node's worker group: start, watch, restart on failure, stop, report (torchrun's agent).

Each attempt first finds this node's place in the job (:mod:`.nodes`: static or c10d
rendezvous), then starts the workers (with their log files, :mod:`.logs`) and watches them.

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

from .config import LaunchConfig, worker_env
from .logs import LogFiles, RankLogs
from .nodes import C10dNodes, Interrupted, PeerEnd, RendezvousError, StaticNodes, make_nodes
from .output import STDERR
from .report import failure_report
from .worker import Worker, describe_exit, signal_name

EXIT_FAILURE = 1
EXIT_TIMEOUT = 124
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")  # torchrun's default set
KILL_WAIT_SECONDS = 5.0
STOP_POLL_SECONDS = 0.02

Nodes = StaticNodes | C10dNodes


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
    """How an attempt ended: ``ok``, ``failed`` (``failures``), ``timeout``, ``signal`` or
    ``peer`` (another node ended the round: ``peer``)."""

    kind: str
    failures: list[Worker] = field(default_factory=list)
    running: list[Worker] = field(default_factory=list)
    signum: int = 0
    peer: PeerEnd | None = None


def start_group(
    config: LaunchConfig,
    restart_count: int,
    master_port: int,
    logs: dict[int, RankLogs] | None = None,
) -> list[Worker]:
    """Start this node's ``nproc_per_node`` workers; on a start error, stop those started."""
    workers: list[Worker] = []
    try:
        for local_rank in range(config.nproc_per_node):
            env = worker_env(config, local_rank, restart_count, master_port)
            rank_logs = None if logs is None else logs[local_rank]
            if rank_logs is not None:
                env["TORCHELASTIC_ERROR_FILE"] = str(rank_logs.error_file)
            workers.append(Worker(config, local_rank, config.command, env, rank_logs))
    except BaseException:
        stop_group(workers, signal.SIGKILL, 0.0, SignalRecorder())
        raise
    return workers


def watch_group(
    config: LaunchConfig,
    workers: list[Worker],
    deadline: float | None,
    signals: SignalRecorder,
    nodes: Nodes | None = None,
) -> Outcome:
    """Poll every ``monitor_interval`` until all succeed, one fails, time runs out, a signal
    comes or another node ends the round."""
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
        peer = None if nodes is None else nodes.peer_ended()
        if peer is not None:
            return Outcome("peer", peer=peer)
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


class _Launch:
    """One run of the launcher: the attempts, each a rendezvous and a worker group."""

    def __init__(self, config: LaunchConfig, signals: SignalRecorder):
        self.config = config
        self.signals = signals
        self.deadline = None if config.timeout is None else time.monotonic() + config.timeout
        self.nodes = make_nodes(config)
        self.logs = None if config.logs is None else LogFiles(config.logs, config.run_id)

    def stop(self) -> bool:
        """Whether to stop waiting (for other nodes): a signal came or --timeout passed."""
        deadline = self.deadline
        return bool(self.signals.received) or (
            deadline is not None and time.monotonic() >= deadline
        )

    def run(self) -> int:
        """Run the attempts; the exit code (see the module)."""
        try:
            return self._attempts()
        except RendezvousError as exc:
            _say(f"rendezvous failed: {exc}")
            return EXIT_FAILURE
        except Interrupted as exc:
            if self.signals.received:
                signum = self.signals.received[0]
                _say(f"received {signal_name(signum)} during the rendezvous ({exc})")
                return 128 + signum
            _say(f"timed out after {self.config.timeout:g} s (--timeout) during the rendezvous")
            return EXIT_TIMEOUT
        finally:
            self.nodes.close(self.stop)

    def _attempts(self) -> int:
        config = self.config
        for attempt in range(config.max_restarts + 1):
            if self.signals.received:  # stopped while the previous attempt was shutting down
                return 128 + self.signals.received[0]
            code = self._attempt(attempt)
            if code is not None:
                return code
            _say(
                f"worker group failed; restarting it (restart {attempt + 1} of "
                f"{config.max_restarts})"
            )
        return EXIT_FAILURE  # not reached: the last attempt returns

    def _rank_logs(self, attempt: int) -> dict[int, RankLogs] | None:
        if self.logs is None:
            return None
        first = self.logs.run_dir is None
        found = self.logs.attempt(attempt, self.config.nproc_per_node)
        if first:
            _say(f"worker logs in {self.logs.run_dir}")
        return found

    def _attempt(self, attempt: int) -> int | None:
        """Run attempt ``attempt``; its exit code, or None to restart."""
        placement = self.nodes.join(attempt, self.stop)
        config = placement.apply(self.config)
        if self.config.rdzv is not None:
            first, last = placement.rank_offset, placement.rank_offset + config.nproc_per_node - 1
            _say(
                f"node rank {placement.node_rank} of {placement.nnodes}: ranks {first}..{last} "
                f"of {placement.world_size}; master {placement.master_addr}:{placement.master_port}"
            )
        try:
            workers = start_group(config, attempt, placement.master_port, self._rank_logs(attempt))
        except OSError as exc:
            self.nodes.end("failed")
            _say(f"could not start the workers: {exc}")
            return EXIT_FAILURE
        outcome = watch_group(config, workers, self.deadline, self.signals, self.nodes)
        settle = getattr(self, f"_settle_{outcome.kind}")
        return settle(attempt, workers, outcome)

    def _stop(self, workers: list[Worker], signum: int = signal.SIGTERM) -> None:
        stop_group(workers, signum, self.config.shutdown_timeout, self.signals)

    def _settle_ok(self, attempt: int, workers: list[Worker], outcome: Outcome) -> int | None:
        self.nodes.end("ok")
        self._stop(workers)
        return 0

    def _settle_signal(self, attempt: int, workers: list[Worker], outcome: Outcome) -> int | None:
        self.nodes.end("stopped")
        running = [w for w in workers if w.running]
        name = signal_name(outcome.signum)
        _say(f"received {name}; forwarding it to {len(running)} running worker(s)")
        self._stop(workers, outcome.signum)
        return 128 + outcome.signum

    def _settle_timeout(self, attempt: int, workers: list[Worker], outcome: Outcome) -> int | None:
        self.nodes.end("stopped")
        _say(
            f"timed out after {self.config.timeout:g} s (--timeout): ranks "
            f"{_ranks(outcome.running)} still running; killing all workers"
        )
        self._stop(workers)
        return EXIT_TIMEOUT

    def _settle_failed(self, attempt: int, workers: list[Worker], outcome: Outcome) -> int | None:
        self.nodes.end("failed")  # first, so that the other nodes stop theirs now
        others = sum(1 for w in workers if w.running)
        for worker in outcome.failures:
            _say(
                f"rank {worker.rank} (local_rank {worker.local_rank}) "
                f"{describe_exit(worker.exitcode or 0)}; stopping {others} other worker(s)"
            )
        self._stop(workers)
        if self._may_restart(attempt):
            return None
        STDERR.print(failure_report(self.config.entrypoint, outcome.failures))
        return EXIT_FAILURE

    def _settle_peer(self, attempt: int, workers: list[Worker], outcome: Outcome) -> int | None:
        assert outcome.peer is not None
        running = sum(1 for w in workers if w.running)
        _say(f"{outcome.peer.describe()}; stopping this node's {running} running worker(s)")
        self._stop(workers)
        if outcome.peer.kind == "failed" and self._may_restart(attempt):
            return None
        return EXIT_FAILURE

    def _may_restart(self, attempt: int) -> bool:
        if attempt >= self.config.max_restarts:
            return False
        if self.nodes.can_restart():
            return True
        _say("not restarting: another node's workers already finished")
        return False


def run(config: LaunchConfig) -> int:
    """Run the worker group to completion, restarting it up to ``max_restarts`` times."""
    _omp_notice(config)
    with SignalRecorder().installed() as signals:
        return _Launch(config, signals).run()
