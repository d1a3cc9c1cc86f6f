"""One worker process of the launcher, in its own session, with its output streamed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence

from .config import LaunchConfig
from .output import STDERR, STDOUT, StreamPump

PUMP_JOIN_SECONDS = 2.0


class Worker:
    """A worker process (torchrun starts each with ``start_new_session=True`` too).

    Its own session and process group let the launcher signal it and every process it started
    at once, and keep a terminal's Ctrl-C for the launcher, which forwards it. stderr always
    goes through a pipe (its tail explains failures); stdout only with a prefix or a filter.
    """

    def __init__(
        self,
        config: LaunchConfig,
        local_rank: int,
        command: Sequence[str],
        env: dict[str, str],
    ):
        self.local_rank = local_rank
        self.rank = config.global_rank(local_rank)
        self.ended_at: float | None = None  # time.time() when its exit was first observed
        shown = config.shows_output(local_rank)
        prefix = f"[rank {self.rank}]: ".encode() if config.prefix else b""
        pipe_stdout = config.prefix or not shown
        self.process = subprocess.Popen(
            list(command),
            env=env,
            stdout=subprocess.PIPE if pipe_stdout else None,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.pid = self.process.pid
        self._pumps: list[StreamPump] = []
        if self.process.stdout is not None:
            out = StreamPump(self.process.stdout, STDOUT if shown else None, prefix, tail_lines=1)
            self._pumps.append(out)
        assert self.process.stderr is not None
        self._stderr = StreamPump(self.process.stderr, STDERR if shown else None, prefix)
        self._pumps.append(self._stderr)
        for pump in self._pumps:
            pump.start()

    @property
    def exitcode(self) -> int | None:
        """The exit code (negative: killed by that signal), or None while it runs."""
        code = self.process.poll()
        if code is not None and self.ended_at is None:
            self.ended_at = time.time()
        return code

    @property
    def running(self) -> bool:
        """Whether the worker process has not exited yet."""
        return self.exitcode is None

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the worker's process group (it and the processes it started)."""
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass  # the whole group is gone already

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the worker to exit; its exit code or None."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        return self.exitcode

    def close_output(self) -> None:
        """Wait (briefly) until its output is all forwarded and its pipes are closed."""
        for pump in self._pumps:
            pump.join(PUMP_JOIN_SECONDS)

    def stderr_tail(self) -> list[str]:
        """The last lines the worker wrote to stderr."""
        return self._stderr.tail()


def describe_exit(exitcode: int) -> str:
    """``exited with code 3`` or ``was killed by signal SIGKILL (exit code -9)``."""
    if exitcode < 0:
        return f"was killed by signal {signal_name(-exitcode)} (exit code {exitcode})"
    return f"exited with code {exitcode}"


def signal_name(signum: int) -> str:
    """``SIGKILL`` for 9; the number as text for an unknown signal."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
