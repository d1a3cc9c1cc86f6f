"""The child side of :func:`pyc10d.testing.spawn`: set a rank up, run it, report to the parent."""

from __future__ import annotations

import faulthandler
import os
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from .context import RankContext

# The faulthandler dump file must stay open for the life of the process.
_stack_file = None


def stack_dump_path(tmpdir: str, rank: int) -> str:
    """Where rank ``rank`` writes its Python stacks when sent SIGUSR1."""
    return os.path.join(tmpdir, f".rank{rank}.stacks")


def _watch_parent(lifeline: Connection) -> None:
    """Exit the process as soon as the parent's end of ``lifeline`` closes (parent gone)."""
    try:
        lifeline.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(70)


def _setup(ctx: RankContext, lifeline: Connection) -> None:
    """Own process group, parent watchdog, stack dumps on SIGUSR1, and the rank's env vars."""
    global _stack_file
    try:
        os.setpgid(0, 0)  # so the parent can kill this rank together with anything it started
    except OSError:
        pass
    watchdog = threading.Thread(target=_watch_parent, args=(lifeline,), daemon=True)
    watchdog.start()
    _stack_file = open(stack_dump_path(ctx.tmpdir, ctx.rank), "w")  # noqa: SIM115
    faulthandler.register(signal.SIGUSR1, file=_stack_file, all_threads=True)
    for name in [n for n in os.environ if n.startswith("PYC10D_") and n not in ctx.env]:
        del os.environ[name]  # inherited from the forkserver's start, not the parent's today
    os.environ.update(ctx.env)
    if "OMP_NUM_THREADS" not in ctx.env and "OMP_NUM_THREADS" not in os.environ:
        # like torchrun: one intra-op thread per rank unless asked, so N ranks don't fight over
        # the cores with N thread pools
        import torch

        torch.set_num_threads(1)


def run_rank(
    fn: Callable[..., Any],
    ctx: RankContext,
    args: tuple,
    results: Connection,
    lifeline: Connection,
) -> None:
    """Process target: run ``fn(ctx, *args)`` and send ``("ok", value)`` or ``("error", text)``."""
    _setup(ctx, lifeline)
    failed = True
    try:
        value = fn(ctx, *args)
    except BaseException:
        payload = pickle.dumps(("error", traceback.format_exc()))
    else:
        try:
            payload = pickle.dumps(("ok", value), protocol=pickle.HIGHEST_PROTOCOL)
            failed = False
        except Exception:
            text = f"rank {ctx.rank} returned a value that cannot be pickled:\n"
            payload = pickle.dumps(("error", text + traceback.format_exc()))
    try:
        results.send_bytes(payload)
        results.close()
    finally:
        try:
            ctx.close()
        except Exception:
            traceback.print_exc()
    if failed:
        sys.stderr.flush()
        sys.exit(1)
