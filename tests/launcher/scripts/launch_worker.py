"""A worker run by ``pyc10d-run`` for tests/launcher/test_launcher.py; arguments pick its behaviour.

Every rank first writes ``rank<R>.json`` into ``--out`` (its launcher variables, arguments, pid
and the pid of a child it started with ``--child``). It imports no torch, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "ROLE_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_NAME",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "OMP_NUM_THREADS",
)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--child", action="store_true", help="start a sleeping child process")
    parser.add_argument("--crash-rank", type=int, help="raise once every rank has started")
    parser.add_argument("--signal-rank", type=int, help="kill itself with SIGUSR1")
    parser.add_argument("--fail-first-attempt-rank", type=int, help="exit 3 on attempt 0")
    parser.add_argument("--hang", action="store_true", help="ranks > 0 sleep, ignoring SIGTERM")
    parser.add_argument("--sleep", type=float, default=0.0, help="then sleep this long")
    parser.add_argument("--sleep-first-attempt", type=float, default=0.0, help="on attempt 0")
    parser.add_argument("--say", default="", help="print this, with the rank, to stdout")
    parser.add_argument("--wait-file", type=Path, help="then wait (up to 60 s) until it exists")
    parser.add_argument("extra", nargs="*")
    return parser.parse_args()


def wait_for_all(out: Path, world_size: int) -> None:
    deadline = time.monotonic() + 20
    while len(list(out.glob("rank*.json"))) < world_size and time.monotonic() < deadline:
        time.sleep(0.02)


def main() -> None:
    args = parse()
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    child = subprocess.Popen(["sleep", "60"]) if args.child else None
    record = {
        "env": {name: os.environ.get(name) for name in VARIABLES},
        "argv": sys.argv[1:],
        "pid": os.getpid(),
        "child": child.pid if child else None,
    }
    path = args.out / f"rank{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    tmp.rename(path)
    if args.say:
        # one write: the workers share the launcher's stdout, and a print in pieces interleaves
        os.write(1, f"{args.say} {rank}\n".encode())
    if args.wait_file is not None:
        deadline = time.monotonic() + 60
        while not args.wait_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    if rank == args.fail_first_attempt_rank and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        print(f"rank {rank} fails on its first attempt", file=sys.stderr)
        sys.exit(3)
    if rank == args.crash_rank:
        wait_for_all(args.out, world_size)
        raise RuntimeError(f"boom from rank {rank}")
    if rank == args.signal_rank:
        wait_for_all(args.out, world_size)
        os.kill(os.getpid(), signal.SIGUSR1)
    if args.hang and rank > 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(60)
    time.sleep(args.sleep)
    if os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        time.sleep(args.sleep_first_attempt)


if __name__ == "__main__":
    main()
