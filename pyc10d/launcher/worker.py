"""One worker process of the launcher, in its own session, with its output streamed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .config import LaunchConfig
from .logs import RankLogs, Std
from .output import STDERR, STDOUT, StreamPump

PUMP_JOIN_SECONDS = 2.0


def _open_log(path: Path | None) -> IO[bytes] | None:
    return None if path is None else open(path, "wb")  # a pump, or the worker, owns it


class Worker:
    """A worker process (torchrun starts each with ``start_new_session=True`` too).

    Its own session and process group let the launcher signal it and every process it started
    at once, and keep a terminal's Ctrl-C for the launcher, which forwards it. stderr always
    goes through a pipe (its tail explains failures); stdout through one when it is prefixed,
    filtered out or tee'd to a file, straight to its file when redirected (``logs``).
    """

    def __init__(
        self,
        config: LaunchConfig,
        local_rank: int,
        command: Sequence[str],
        env: dict[str, str],
        logs: RankLogs | None = None,
    ):
        self.local_rank = local_rank
        self.rank = config.global_rank(local_rank)
        self.ended_at: float | None = None  # time.time() when its exit was first observed
        self.error_file = None if logs is None else logs.error_file
        shown = config.shows_output(local_rank)
        self._prefix = f"[rank {self.rank}]: ".encode() if config.prefix else b""
        out_console = shown and (logs is None or logs.on_console(Std.OUT))
        err_console = shown and (logs is None or logs.on_console(Std.ERR))
        out_log = _open_log(None if logs is None else logs.stdout)
        err_log = None
        try:
            err_log = _open_log(None if logs is None else logs.stderr)
            stdout = self._stdout_target(out_console, out_log)
            self.process = subprocess.Popen(
                list(command),
                env=env,
                stdout=stdout,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except BaseException:
            for log in (out_log, err_log):
                if log is not None:
                    log.close()
            raise
        self.pid = self.process.pid
        self._pumps: list[StreamPump] = []
        if self.process.stdout is not None:
            console = STDOUT if out_console else None
            self._pumps.append(
                StreamPump(self.process.stdout, console, self._prefix, 1, log=out_log)
            )
        elif out_log is not None:
            out_log.close()  # the worker writes its stdout to the file itself
        assert self.process.stderr is not None
        console = STDERR if err_console else None
        self._stderr = StreamPump(self.process.stderr, console, self._prefix, log=err_log)
        self._pumps.append(self._stderr)
        for pump in self._pumps:
            pump.start()

    def _stdout_target(self, on_console: bool, log: IO[bytes] | None) -> int | IO[bytes] | None:
        """Where the worker's stdout goes: its log file, the console itself, or a pipe."""
        if log is not None and not on_console:
            return log
        if on_console and log is None and not self._prefix:
            return None
        return subprocess.PIPE

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
