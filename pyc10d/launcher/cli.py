"""``pyc10d-run``'s command line: torchrun's flags and a few of its own.

As in torchrun, every option can also come from a ``PET_<OPTION>`` environment variable (e.g.
``PET_NPROC_PER_NODE=4``); the command line wins. The parsing reuses torch's pieces: the
``PET_`` actions (``torch.distributed.argparse_util``), ``--redirects``/``--tee`` values
(``Std.from_str``) and ``--rdzv-endpoint``/``--rdzv-conf`` parsing (torch's rendezvous utils).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from torch.distributed.argparse_util import check_env, env  # PET_<OPTION> defaults
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.elastic.rendezvous.utils import (
    _parse_rendezvous_config,
    parse_rendezvous_endpoint,
)

from ..core.auth import KEY_ENV, KEY_VARIABLES, load_key, new_key
from .config import DEFAULT_C10D_PORT, DEFAULT_MASTER_PORT, LaunchConfig, RdzvSettings
from .logs import LogSpec, Std, parse_std
from .supervisor import run

DEFAULT_SHUTDOWN_TIMEOUT = 30.0  # torchrun's, also from TORCH_ELASTIC_SHUTDOWN_TIMEOUT


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyc10d-run`` (torchrun's names, dashes or underscores)."""
    parser = argparse.ArgumentParser(
        prog="pyc10d-run",
        description="Start a group of pyc10d worker processes on this node, as torchrun does. "
        "Multi-node: each node runs pyc10d-run with its --node-rank (static rendezvous), or all "
        "with the same --rdzv-backend c10d --rdzv-endpoint HOST:PORT (node ranks agreed there).",
    )
    _add_node_flags(parser)
    _add_rdzv_flags(parser)
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
        action=env,
        default="1",
        help="Number of nodes: N, or MIN:MAX with --rdzv-backend c10d (the job starts with "
        "MAX nodes, or with the nodes there last_call_timeout s after MIN have joined).",
    )
    add(
        "--nproc-per-node",
        "--nproc_per_node",
        action=env,
        default="1",
        help="Workers on this node: an int, or 'cpu'/'auto' (the number of CPUs).",
    )
    add(
        "--node-rank",
        "--node_rank",
        action=env,
        type=int,
        default=0,
        help="Rank of this node, in [0, nnodes) (static rendezvous only).",
    )


def _add_rdzv_flags(parser: argparse.ArgumentParser) -> None:
    """How the nodes find each other: static (--node-rank) or through a c10d store."""
    add = parser.add_argument
    add(
        "--rdzv-backend",
        "--rdzv_backend",
        action=env,
        default="static",
        help="static (each node given its --node-rank) or c10d (the nodes take ranks in the "
        "order they join a TCPStore at --rdzv-endpoint, served by the launcher on that host).",
    )
    add(
        "--rdzv-endpoint",
        "--rdzv_endpoint",
        action=env,
        default="",
        help=f"HOST[:PORT] of the c10d rendezvous store (default port {DEFAULT_C10D_PORT}); "
        "with static, the master's address instead of --master-addr/--master-port.",
    )
    add(
        "--rdzv-id",
        "--rdzv_id",
        action=env,
        default="none",
        help="Job id: keeps jobs sharing a rendezvous store apart; names the log directory; "
        "given to workers as TORCHELASTIC_RUN_ID.",
    )
    add(
        "--rdzv-conf",
        "--rdzv_conf",
        action=env,
        default="",
        help="KEY=VALUE,... for c10d: join_timeout (s, default 600), last_call_timeout "
        "(s, default 30), is_host (serve the store here: 1/0); other keys are ignored.",
    )
    add(
        "--local-addr",
        "--local_addr",
        action=env,
        default=None,
        help="c10d: this node's address, given to all workers as MASTER_ADDR when this is node 0 "
        "(default: the endpoint host on its host, else the address that reaches it).",
    )


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    """Where the job's TCPStore is: the master's address and port."""
    add = parser.add_argument
    add(
        "--master-addr",
        "--master_addr",
        action=env,
        default="127.0.0.1",
        help="Address of the node of rank 0, where rank 0 hosts the TCPStore (static only).",
    )
    add(
        "--master-port",
        "--master_port",
        action=env,
        type=int,
        default=None,
        help="Port of that store. Default: a free port on one node (or node 0 with c10d); "
        f"{DEFAULT_MASTER_PORT} with --nnodes > 1 (static).",
    )
    add(
        "--standalone",
        action=check_env,
        help="Single-node job on a free port of this host (--master-port is ignored).",
    )


def _add_lifecycle_flags(parser: argparse.ArgumentParser) -> None:
    """Restarts, monitoring, shutdown and the overall timeout."""
    add = parser.add_argument
    add(
        "--max-restarts",
        "--max_restarts",
        action=env,
        type=int,
        default=0,
        help="Restart the whole worker group up to this many times when a worker fails "
        "(with c10d, every node's group, after a new rendezvous).",
    )
    add(
        "--monitor-interval",
        "--monitor_interval",
        action=env,
        type=float,
        default=0.1,
        help="Seconds between checks of the workers' state.",
    )
    add(
        "--shutdown-timeout",
        "--shutdown_timeout",
        action=env,
        type=float,
        default=os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(DEFAULT_SHUTDOWN_TIMEOUT)),
        help="Seconds workers get to exit after SIGTERM (or a forwarded signal) before SIGKILL.",
    )
    add(
        "--timeout",
        action=env,
        type=float,
        default=None,
        help="Not in torchrun: kill all workers still running this many seconds after the launch "
        "(restarts included) and exit with code 124; for catching hangs.",
    )


def _add_job_flags(parser: argparse.ArgumentParser) -> None:
    """The workers' role name, and authentication."""
    add = parser.add_argument
    add("--role", action=env, default="default", help="Role name of the workers.")
    add(
        "--auth",
        action=check_env,
        help="Not in torchrun: the workers' TCPStore and TCP connections must prove they know a "
        f"shared key (HMAC challenge-response). Uses {KEY_VARIABLES} if set (it must be, with "
        f"several nodes); else a fresh key per job, given to the workers as {KEY_ENV}.",
    )


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
    """What the console shows of the workers' output."""
    add = parser.add_argument
    add(
        "--prefix",
        action=check_env,
        help="Not in torchrun: prefix each line workers print with '[rank N]: '.",
    )
    add(
        "--local-ranks-filter",
        "--local_ranks_filter",
        action=env,
        default="",
        help="Only show the output of these local ranks on the console (e.g. 0,1); log files "
        "are still written for every rank.",
    )
    add(
        "--log-dir",
        "--log_dir",
        action=env,
        default=None,
        help="Write each worker's output to <log-dir>/<rdzv-id>_<random>/attempt_<restart>/"
        "<local_rank>/stdout.log and stderr.log (torchrun's layout). Alone, it copies both "
        "streams of every rank there (as --tee 3); torchrun writes none without -r/-t.",
    )
    add(
        "-r",
        "--redirects",
        action=env,
        default=None,
        help="Send streams to the log files instead of the console: 1 stdout, 2 stderr, 3 both, "
        "for every rank, or per local rank as 0:3,1:2 (default 0; files in a new temporary "
        "directory when there is no --log-dir).",
    )
    add(
        "-t",
        "--tee",
        action=env,
        default=None,
        help="Send streams to the log files and the console (values as --redirects).",
    )


def _add_script_flags(parser: argparse.ArgumentParser) -> None:
    """How to run the script, the script and its arguments."""
    add = parser.add_argument
    add(
        "-m",
        "--module",
        action=check_env,
        help="Run the script argument as a module, like 'python -m'.",
    )
    add(
        "--no-python",
        "--no_python",
        action=check_env,
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


def _nnodes(parser: argparse.ArgumentParser, text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    min_nodes = _count(parser, "--nnodes", low)
    max_nodes = _count(parser, "--nnodes", high) if sep else min_nodes
    if min_nodes > max_nodes:
        parser.error(f"--nnodes {text}: MIN is larger than MAX")
    return min_nodes, max_nodes


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


def _std(parser: argparse.ArgumentParser, flag: str, text: str | None) -> Std | dict[int, Std]:
    try:
        return parse_std(text or "0")
    except ValueError:
        parser.error(f"{flag} must be 0-3 or a map like 0:1,1:3 (local rank:streams), got {text!r}")


def _log_spec(parser: argparse.ArgumentParser, args: argparse.Namespace) -> LogSpec | None:
    """torchrun's --log-dir/--redirects/--tee; --log-dir alone tees every stream."""
    if args.log_dir is None and args.redirects is None and args.tee is None:
        return None
    if args.log_dir is not None and os.path.isfile(args.log_dir):
        parser.error(f"--log-dir {args.log_dir} is a file")
    redirects = _std(parser, "--redirects", args.redirects)
    tee = _std(parser, "--tee", args.tee)
    if args.redirects is None and args.tee is None:
        tee = Std.ALL
    elif args.log_dir is None and redirects == Std.NONE and tee == Std.NONE:
        return None  # -r 0 / -t 0: nothing to write
    return LogSpec(log_dir=args.log_dir, redirects=redirects, tee=tee)


def _c10d(
    parser: argparse.ArgumentParser, args: argparse.Namespace, nodes: tuple[int, int]
) -> RdzvSettings:
    """--rdzv-endpoint and --rdzv-conf for the c10d backend, parsed by torch's functions."""
    try:
        host, port = parse_rendezvous_endpoint(args.rdzv_endpoint, DEFAULT_C10D_PORT)
        conf = _parse_rendezvous_config(args.rdzv_conf)
        params = RendezvousParameters("c10d", f"{host}:{port}", args.rdzv_id, *nodes, **conf)
        join_timeout = params.get_as_int("join_timeout", 600)
        last_call = params.get_as_int("last_call_timeout", 30)
        is_host = params.get_as_bool("is_host")
    except ValueError as exc:
        parser.error(f"--rdzv-endpoint/--rdzv-conf: {exc}")
    if args.node_rank != 0:
        print("pyc10d-run: --node-rank is ignored with --rdzv-backend c10d", file=sys.stderr)
    return RdzvSettings(host, port, *nodes, float(join_timeout), float(last_call), is_host)


def _rendezvous(
    parser: argparse.ArgumentParser, args: argparse.Namespace, nodes: tuple[int, int]
) -> RdzvSettings | None:
    """The c10d settings, or None for static rendezvous (checked against --nnodes/--node-rank)."""
    backend = "static" if args.standalone else args.rdzv_backend
    if backend == "c10d":
        return _c10d(parser, args, nodes)
    if backend != "static":
        parser.error(f"--rdzv-backend {backend} is not supported; use static or c10d")
    min_nodes, max_nodes = nodes
    if min_nodes != max_nodes:
        parser.error(f"--nnodes {args.nnodes}: node ranges (MIN:MAX) need --rdzv-backend c10d")
    if not 0 <= args.node_rank < max_nodes:
        parser.error(f"--node-rank {args.node_rank} is out of range for --nnodes {max_nodes}")
    if args.standalone and max_nodes != 1:
        parser.error("--standalone is for single-node jobs (--nnodes 1)")
    return None


def _check_policies(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
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


def _master(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    rdzv: RdzvSettings | None,
    nnodes: int,
) -> tuple[str, int | None]:
    """MASTER_ADDR/MASTER_PORT for static rendezvous (c10d: node 0 picks them)."""
    if args.standalone:
        return args.master_addr, None
    if rdzv is None and args.rdzv_endpoint:
        try:
            return parse_rendezvous_endpoint(args.rdzv_endpoint, DEFAULT_MASTER_PORT)
        except ValueError as exc:
            parser.error(f"--rdzv-endpoint: {exc}")
    port = args.master_port
    if port is None and rdzv is None and nnodes > 1:
        port = DEFAULT_MASTER_PORT
    return args.master_addr, port


def _auth_env(parser: argparse.ArgumentParser, args: argparse.Namespace, nnodes: int) -> dict:
    """--auth: the key variable the workers get (none when the environment already has one)."""
    if not args.auth:
        return {}
    try:
        key = load_key()
    except ValueError as exc:
        parser.error(f"--auth: {exc}")
    if key is not None:
        return {}  # the workers inherit it
    if nnodes > 1:
        parser.error(
            f"--auth with several nodes needs the same key on every node: set {KEY_VARIABLES} "
            "for each node's pyc10d-run (a key is only made up for single-node jobs)"
        )
    return {KEY_ENV: new_key()}


def parse_config(argv: Sequence[str] | None = None) -> LaunchConfig:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into a :class:`LaunchConfig`; exit 2 if bad."""
    parser = build_parser()
    args = parser.parse_args(argv)
    nodes = _nnodes(parser, str(args.nnodes))
    nproc = _nproc(parser, str(args.nproc_per_node))
    rdzv = _rendezvous(parser, args, nodes)
    _check_policies(parser, args)
    master_addr, port = _master(parser, args, rdzv, nodes[1])
    extra_env = _auth_env(parser, args, nodes[1])
    if "OMP_NUM_THREADS" not in os.environ and nproc > 1:
        extra_env["OMP_NUM_THREADS"] = "1"
    return LaunchConfig(
        command=_command(args),
        entrypoint=args.training_script,
        nproc_per_node=nproc,
        nnodes=nodes[1],
        node_rank=0 if rdzv is not None else args.node_rank,
        master_addr=master_addr,
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
        logs=_log_spec(parser, args),
        rdzv=rdzv,
        local_addr=args.local_addr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pyc10d-run`` with ``argv``; returns the exit code (see :mod:`.supervisor`)."""
    return run(parse_config(argv))
