"""``pyc10d-run``'s command line: torchrun's flags (static rendezvous) and a few of its own.

As in torchrun, every option can also come from a ``PET_<OPTION>`` environment variable (e.g.
``PET_NPROC_PER_NODE=4``); the command line wins.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from .config import DEFAULT_MASTER_PORT, LaunchConfig
from .supervisor import run

DEFAULT_SHUTDOWN_TIMEOUT = 30.0  # torchrun's, also from TORCH_ELASTIC_SHUTDOWN_TIMEOUT


class _EnvDefault(argparse.Action):
    """An option whose default comes from ``PET_<DEST>`` when set (torchrun's ``env`` action)."""

    def __init__(self, option_strings: list[str], dest: str, default: Any = None, **kwargs: Any):
        default = os.environ.get(f"PET_{dest.upper()}", default)
        super().__init__(option_strings, dest, default=default, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)


class _EnvFlag(argparse.Action):
    """A flag that is also on when ``PET_<DEST>`` is ``1`` (torchrun's ``check_env`` action)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any):
        default = os.environ.get(f"PET_{dest.upper()}", "0") == "1"
        super().__init__(option_strings, dest, nargs=0, default=default, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyc10d-run`` (torchrun's names, dashes or underscores)."""
    parser = argparse.ArgumentParser(
        prog="pyc10d-run",
        description="Start a group of pyc10d worker processes on this node, as torchrun does "
        "(static rendezvous: each node runs pyc10d-run with its --node-rank).",
    )
    _add_node_flags(parser)
    _add_store_flags(parser)
    _add_lifecycle_flags(parser)
    _add_job_flags(parser)
    _add_output_flags(parser)
    _add_script_flags(parser)
    return parser


def _add_node_flags(parser: argparse.ArgumentParser) -> None:
    """The job's size and this node's place in it."""
    add = parser.add_argument
    add(
        "--nnodes",
        action=_EnvDefault,
        default="1",
        help="Number of nodes: N, or N:N (elastic MIN:MAX ranges are not supported).",
    )
    add(
        "--nproc-per-node",
        "--nproc_per_node",
        action=_EnvDefault,
        default="1",
        help="Workers on this node: an int, or 'cpu'/'auto' (the number of CPUs).",
    )
    add(
        "--node-rank",
        "--node_rank",
        action=_EnvDefault,
        type=int,
        default=0,
        help="Rank of this node, in [0, nnodes).",
    )


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    """Where the job's TCPStore is: the master's address and port."""
    add = parser.add_argument
    add(
        "--master-addr",
        "--master_addr",
        action=_EnvDefault,
        default="127.0.0.1",
        help="Address of the node of rank 0, where rank 0 hosts the TCPStore.",
    )
    add(
        "--master-port",
        "--master_port",
        action=_EnvDefault,
        type=int,
        default=None,
        help="Port of that store. Default: a free port on one node; "
        f"{DEFAULT_MASTER_PORT} with --nnodes > 1.",
    )
    add(
        "--standalone",
        action=_EnvFlag,
        help="Single-node job on a free port of this host (--master-port is ignored).",
    )


def _add_lifecycle_flags(parser: argparse.ArgumentParser) -> None:
    """Restarts, monitoring, shutdown and the overall timeout."""
    add = parser.add_argument
    add(
        "--max-restarts",
        "--max_restarts",
        action=_EnvDefault,
        type=int,
        default=0,
        help="Restart the whole worker group up to this many times when a worker fails.",
    )
    add(
        "--monitor-interval",
        "--monitor_interval",
        action=_EnvDefault,
        type=float,
        default=0.1,
        help="Seconds between checks of the workers' state.",
    )
    add(
        "--shutdown-timeout",
        "--shutdown_timeout",
        action=_EnvDefault,
        type=float,
        default=os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(DEFAULT_SHUTDOWN_TIMEOUT)),
        help="Seconds workers get to exit after SIGTERM (or a forwarded signal) before SIGKILL.",
    )
    add(
        "--timeout",
        action=_EnvDefault,
        type=float,
        default=None,
        help="Not in torchrun: kill all workers still running this many seconds after the launch "
        "(restarts included) and exit with code 124; for catching hangs.",
    )


def _add_job_flags(parser: argparse.ArgumentParser) -> None:
    """The workers' role name and the job id."""
    add = parser.add_argument
    add("--role", action=_EnvDefault, default="default", help="Role name of the workers.")
    add(
        "--rdzv-id",
        "--rdzv_id",
        action=_EnvDefault,
        default="none",
        help="Job id, given to workers as TORCHELASTIC_RUN_ID.",
    )


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    """What the console shows of the workers' output."""
    add = parser.add_argument
    add(
        "--prefix",
        action=_EnvFlag,
        help="Not in torchrun: prefix each line workers print with '[rank N]: '.",
    )
    add(
        "--local-ranks-filter",
        "--local_ranks_filter",
        action=_EnvDefault,
        default="",
        help="Only show the output of these local ranks on the console (e.g. 0,1).",
    )


def _add_script_flags(parser: argparse.ArgumentParser) -> None:
    """How to run the script, the script and its arguments."""
    add = parser.add_argument
    add(
        "-m",
        "--module",
        action=_EnvFlag,
        help="Run the script argument as a module, like 'python -m'.",
    )
    add(
        "--no-python",
        "--no_python",
        action=_EnvFlag,
        help="Run the script argument as an executable, without 'python'.",
    )
    add("training_script", help="The script (or module, with -m) each worker runs.")
    add("training_script_args", nargs=argparse.REMAINDER, help="Arguments passed on to the script.")


def _count(parser: argparse.ArgumentParser, flag: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        parser.error(f"{flag} must be an integer, got {text!r}")
    if value < 1:
        parser.error(f"{flag} must be positive, got {value}")
    return value


def _nnodes(parser: argparse.ArgumentParser, text: str) -> int:
    low, sep, high = text.partition(":")
    if sep and low != high:
        parser.error(f"--nnodes {text}: elastic node ranges are not supported; give N or N:N")
    return _count(parser, "--nnodes", low)


def _nproc(parser: argparse.ArgumentParser, text: str) -> int:
    if text in ("cpu", "auto"):
        return os.cpu_count() or 1
    if text in ("gpu", "xpu"):
        parser.error(f"--nproc-per-node {text}: pyc10d runs on CPU; give a number, cpu or auto")
    return _count(parser, "--nproc-per-node", text)


def _ranks_filter(parser: argparse.ArgumentParser, text: str) -> frozenset[int] | None:
    if not text:
        return None
    try:
        return frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        parser.error(f"--local-ranks-filter must be a comma-separated list of ints, got {text!r}")


def _command(args: argparse.Namespace) -> list[str]:
    if args.no_python:
        return [args.training_script, *args.training_script_args]
    python = os.environ.get("PYTHON_EXEC", sys.executable)
    module = ["-m"] if args.module else []
    return [python, "-u", *module, args.training_script, *args.training_script_args]


def parse_config(argv: Sequence[str] | None = None) -> LaunchConfig:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into a :class:`LaunchConfig`; exit 2 if bad."""
    parser = build_parser()
    args = parser.parse_args(argv)
    nnodes = _nnodes(parser, str(args.nnodes))
    nproc = _nproc(parser, str(args.nproc_per_node))
    if not 0 <= args.node_rank < nnodes:
        parser.error(f"--node-rank {args.node_rank} is out of range for --nnodes {nnodes}")
    if args.standalone and nnodes != 1:
        parser.error("--standalone is for single-node jobs (--nnodes 1)")
    if args.max_restarts < 0:
        parser.error(f"--max-restarts must be >= 0, got {args.max_restarts}")
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    if args.monitor_interval <= 0 or args.shutdown_timeout < 0:
        parser.error("--monitor-interval must be positive and --shutdown-timeout not negative")
    if args.no_python and args.module:
        parser.error(
            "Don't use both the '--no-python' flag and the '--module' flag at the same time."
        )
    port = args.master_port
    if args.standalone:
        port = None
    elif port is None and nnodes > 1:
        port = DEFAULT_MASTER_PORT
    extra_env = {}
    if "OMP_NUM_THREADS" not in os.environ and nproc > 1:
        extra_env["OMP_NUM_THREADS"] = "1"
    return LaunchConfig(
        command=_command(args),
        entrypoint=args.training_script,
        nproc_per_node=nproc,
        nnodes=nnodes,
        node_rank=args.node_rank,
        master_addr=args.master_addr,
        master_port=port,
        max_restarts=args.max_restarts,
        monitor_interval=args.monitor_interval,
        shutdown_timeout=args.shutdown_timeout,
        timeout=args.timeout,
        prefix=args.prefix,
        local_ranks_filter=_ranks_filter(parser, args.local_ranks_filter),
        role=args.role,
        run_id=args.rdzv_id,
        extra_env=extra_env,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyc10d-run`` with ``argv``; returns the exit code (see :mod:`.supervisor`)."""
    return run(parse_config(argv))
