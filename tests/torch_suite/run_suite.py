"""Run torch's ``distributed_test.py`` suite on one backend and print run/pass/skip/fail.

From the repository root::

    .venv/bin/python -m tests.torch_suite.run_suite --backend pyc10d            # the full suite
    .venv/bin/python -m tests.torch_suite.run_suite --backend gloo -k all_reduce  # a subset
    .venv/bin/python -m tests.torch_suite.run_suite --backend pyc10d --report /tmp/pyc10d.jsonl
    .venv/bin/python -m tests.torch_suite.run_suite --backend pyc10d --ungate  # Gloo/MPI-only tests

Each test spawns ``--world-size`` ranks through torch's ``MultiProcessTestCase``; one that runs
past ``--timeout`` seconds has its ranks killed and counts as a failure. ``--report`` writes one
JSON object per test (name, status, seconds, summary, detail). ``--ungate`` runs only the tests
``distributed_test.py`` reserves, by name, for Gloo or MPI, with that skip lifted
(:func:`tests.torch_suite.suite.ungate_backend_gates`); ``--body-as gloo`` lets the bodies of
those tests take their Gloo branch on the ``--backend`` group. The exit status is 1 when a test
failed. ``distributed_test.py`` needs ``expecttest`` installed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any

from .config import BACKENDS, DEFAULT_WORLD_SIZE, suite_environment

DEFAULT_TIMEOUT = 180
"""Seconds one test may run before its ranks are killed."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.torch_suite.run_suite", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--backend", choices=BACKENDS, default="pyc10d")
    parser.add_argument("--world-size", type=int, default=DEFAULT_WORLD_SIZE)
    parser.add_argument(
        "-k",
        dest="patterns",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run the tests whose name contains PATTERN (or matches it, as a glob); repeatable",
    )
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds per test")
    parser.add_argument("--report", metavar="FILE", help="write one JSON line per test")
    parser.add_argument(
        "--ungate",
        action="store_true",
        help="run only the tests skipped because they name another backend, with that skip lifted",
    )
    parser.add_argument(
        "--body-as",
        choices=BACKENDS,
        help="the backend name the test bodies see in the ranks (groups stay on --backend)",
    )
    parser.add_argument("--list", action="store_true", help="print the selected tests and exit")
    return parser.parse_args(argv)


class Progress:
    """Prints a line per finished test and appends it to the JSON-lines report, if any."""

    def __init__(self, total: int, report: IO[str] | None) -> None:
        self.total = total
        self.done = 0
        self.report = report

    def __call__(self, outcome: Any) -> None:
        """Called by the suite as each test ends."""
        self.done += 1
        note = f"  {outcome.summary[:160]}" if outcome.status != "pass" else ""
        print(
            f"[{self.done}/{self.total}] {outcome.status.upper():4} {outcome.name} "
            f"({outcome.seconds:.1f}s){note}",
            flush=True,
        )
        if self.report is not None:
            record = {
                "name": outcome.name,
                "status": outcome.status,
                "seconds": round(outcome.seconds, 2),
                "summary": outcome.summary,
                "detail": outcome.detail,
            }
            self.report.write(json.dumps(record) + "\n")
            self.report.flush()


def print_counts(backend: str, outcomes: Sequence[Any], seconds: float) -> None:
    """The summary: how many tests ran, passed, were skipped, failed; then the failures."""
    counts = Counter(outcome.status for outcome in outcomes)
    print(
        f"\nbackend={backend} run={len(outcomes)} pass={counts['pass']} "
        f"skip={counts['skip']} fail={counts['fail']} wall={seconds:.0f}s",
        flush=True,
    )
    for outcome in outcomes:
        if outcome.status == "fail":
            print(f"  FAIL {outcome.name}: {outcome.summary[:200]}")


def run(args: argparse.Namespace) -> int:
    """Run the selected tests on ``args.backend``; the exit status."""
    with suite_environment(args.backend, args.world_size, args.body_as):
        suite = importlib.import_module("tests.torch_suite.suite")
        suite.set_test_timeout(args.timeout)
        names = suite.select_tests(args.patterns)
        if args.ungate:
            lifted = set(suite.ungate_backend_gates())
            names = [name for name in names if name in lifted]
        if args.list:
            print("\n".join(names))
            return 0
        print(f"backend={args.backend} world_size={args.world_size} tests={len(names)}", flush=True)
        started = time.monotonic()
        report = open(args.report, "w") if args.report else None  # noqa: SIM115
        try:
            outcomes = suite.run_selected(names, Progress(len(names), report))
        finally:
            if report is not None:
                report.close()
        print_counts(args.backend, outcomes, time.monotonic() - started)
    return 1 if any(outcome.status == "fail" for outcome in outcomes) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tests.torch_suite.run_suite``."""
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
