"""Per-rank log files (torchrun's ``--log-dir``, ``--redirects`` and ``--tee``).

The values of ``--redirects``/``--tee`` are torch's :class:`Std` (``0`` none, ``1`` stdout,
``2`` stderr, ``3`` both, or a per-local-rank map like ``0:1,1:2``), parsed by torch's own
``Std.from_str``. A redirected stream goes to its file only; a tee'd one to its file and to the
console. The files are laid out as torchrun lays them out::

    <log_dir>/<run_id>_<random>/attempt_<restart>/<local_rank>/stdout.log
                                                              /stderr.log
                                                              /error.json

``error.json`` is where a worker's ``@record`` (torch.distributed.elastic.multiprocessing.errors)
writes its exception: the launcher sets ``TORCHELASTIC_ERROR_FILE`` to it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch.distributed.elastic.multiprocessing import Std, to_map

__all__ = ["LogFiles", "LogSpec", "RankLogs", "Std", "parse_std"]


def parse_std(text: str) -> Std | dict[int, Std]:
    """``--redirects``/``--tee``'s value: one :class:`Std` for every rank, or a per-rank map."""
    return Std.from_str(text)


def _has(streams: Std, stream: Std) -> bool:
    return (streams & stream) == stream


@dataclass(frozen=True)
class LogSpec:
    """Where the workers' output goes: ``log_dir`` (None: a new temporary directory), and the
    streams ``redirects`` sends to files only and ``tee`` to files and the console."""

    log_dir: str | None = None
    redirects: Std | dict[int, Std] = Std.NONE
    tee: Std | dict[int, Std] = Std.NONE


@dataclass(frozen=True)
class RankLogs:
    """One worker's log files (None: that stream goes to no file) and what the console shows."""

    directory: Path
    stdout: Path | None
    stderr: Path | None
    console: Std
    error_file: Path

    def on_console(self, stream: Std) -> bool:
        """Whether ``stream`` (``Std.OUT`` or ``Std.ERR``) also goes to the console."""
        return _has(self.console, stream)


class LogFiles:
    """The log directories of one launcher run: one per attempt, one per local rank in it."""

    def __init__(self, spec: LogSpec, run_id: str):
        self.spec = spec
        self.run_id = run_id
        self.run_dir: Path | None = None  # made by the first attempt

    def _make_run_dir(self) -> Path:
        base = self.spec.log_dir or tempfile.mkdtemp(prefix="pyc10d-run_")
        os.makedirs(base, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{self.run_id}_", dir=base))

    def attempt(self, restart_count: int, nproc: int) -> dict[int, RankLogs]:
        """Make (afresh) the directories of attempt ``restart_count``; each local rank's files."""
        if self.run_dir is None:
            self.run_dir = self._make_run_dir()
        attempt_dir = self.run_dir / f"attempt_{restart_count}"
        shutil.rmtree(attempt_dir, ignore_errors=True)
        attempt_dir.mkdir(parents=True)
        redirects = to_map(self.spec.redirects, nproc)
        tees = to_map(self.spec.tee, nproc)
        found = {}
        for local_rank in range(nproc):
            directory = attempt_dir / str(local_rank)
            directory.mkdir()
            redirect, tee = redirects[local_rank], tees[local_rank]
            to_files = redirect | tee
            hidden = redirect & ~tee  # redirected and not tee'd: in the file only
            found[local_rank] = RankLogs(
                directory=directory,
                stdout=directory / "stdout.log" if _has(to_files, Std.OUT) else None,
                stderr=directory / "stderr.log" if _has(to_files, Std.ERR) else None,
                console=Std.ALL & ~hidden,
                error_file=directory / "error.json",
            )
        return found
