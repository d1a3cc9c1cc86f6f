"""The failure report the launcher prints, laid out as torchrun's ``ChildFailedError``.

torchrun's report shows the traceback a worker wrote to its error file (``@record``); so does
ours when there is one (with ``--log-dir``/``--redirects``/``--tee`` the launcher sets
``TORCHELASTIC_ERROR_FILE``), else the tail of the worker's stderr, from its last ``Traceback``
header when there is one.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from .worker import Worker, signal_name

TRACEBACK_LINES = 40
TRACEBACK_HEADER = "Traceback (most recent call last):"
MAX_WIDTH = 60


def traceback_tail(lines: Sequence[str], limit: int = TRACEBACK_LINES) -> list[str]:
    """The last ``limit`` lines, starting at the first traceback header among them if any."""
    tail = list(lines)[-limit:]
    for index, line in enumerate(tail):
        if line.lstrip().endswith(TRACEBACK_HEADER):
            return tail[index:]
    return tail


def recorded_traceback(error_file: Path | None) -> list[str] | None:
    """The traceback torch's ``@record`` wrote to ``error_file``; None if there is none."""
    if error_file is None or not error_file.is_file():
        return None
    try:
        message = json.loads(error_file.read_text())["message"]
        if isinstance(message, dict):
            text = message.get("extraInfo", {}).get("py_callstack") or message.get("message")
        else:
            text = message
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return str(text).rstrip("\n").splitlines() if text else None


def _failure_block(index: int, worker: Worker, host: str) -> str:
    code = worker.exitcode
    assert code is not None
    when = datetime.fromtimestamp(worker.ended_at or 0).isoformat(sep="_")
    signal_text = f" ({signal_name(-code)})" if code < 0 else ""
    error_file = worker.error_file
    recorded = recorded_traceback(error_file)
    lines = recorded if recorded is not None else traceback_tail(worker.stderr_tail())
    if lines:
        message = "\n  ".join(lines)
    elif code < 0:
        message = f"Signal {-code} ({signal_name(-code)}) received by PID {worker.pid}"
    else:
        message = "<nothing on stderr>"
    return (
        f"[{index}]:\n"
        f"  time      : {when}\n"
        f"  host      : {host}\n"
        f"  rank      : {worker.rank} (local_rank: {worker.local_rank})\n"
        f"  exitcode  : {code} (pid: {worker.pid}){signal_text}\n"
        f"  error_file: {error_file if recorded is not None else '<N/A>'}\n"
        f"  traceback : {message}"
    )


def failure_report(entrypoint: str, failures: Sequence[Worker]) -> str:
    """torchrun's ``<entrypoint> FAILED`` block: other failures, then the first observed one."""
    if not failures:
        raise ValueError("failure_report needs at least one failed worker")
    ordered = sorted(failures, key=lambda w: (w.ended_at or 0.0, w.rank))
    root = ordered[0]
    host = socket.getfqdn()
    blocks = {id(w): _failure_block(i, w, host) for i, w in enumerate(failures)}
    others = [blocks[id(w)] for w in failures if w is not root]
    title = f"{entrypoint} FAILED"
    width = max(len(line) for text in [title, *blocks.values()] for line in text.split("\n"))
    width = min(width, MAX_WIDTH)
    return "\n".join(
        [
            "",
            "=" * width,
            title,
            "-" * width,
            "Failures:",
            "\n".join(others) if others else "  <NO_OTHER_FAILURES>",
            "-" * width,
            "Root Cause (first observed failure):",
            blocks[id(root)],
            "=" * width,
        ]
    )
