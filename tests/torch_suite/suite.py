"""torch's ``DistributedTest._DistTestBase`` (``distributed_test.py``) as one test class here.

Import this module only with ``BACKEND`` and ``WORLD_SIZE`` set (see :mod:`.config`):
``distributed_test.py`` reads them when it is imported, and evaluates its skip decorators then.
The ranks torch's harness spawns unpickle ``DistributedSuite._run`` and so import this module
again, in the environment they inherited.

A third-party backend is admitted the way ``distributed_test.py`` expects a user of a plugin
backend to do it: its name is added to ``DistTestCases.backend_feature["plugin"]`` and to every
other feature set that lists Gloo ("ddp", "subgroup", ...), before ``distributed_test`` is imported.
Tests gated on the literal string ``"gloo"`` (``BACKEND != "gloo"``) stay skipped for pyc10d.

:func:`ungate_backend_gates` goes one step further, on request: it lifts the skips that name
another CPU backend (Gloo- or MPI-only, by name) so that those tests run on ``BACKEND`` too.
Those skips (``skip_but_pass_in_sandcastle_if``) are attributes the parent's unittest runner
reads; a rank calls the test function directly, so lifting them in the parent is enough.

Some test bodies branch on the backend's name too (``if BACKEND == "gloo": ddp_model = ...``).
With ``TORCH_SUITE_BODY_AS=gloo`` in the environment, each rank initialises its group on
``BACKEND`` as usual and then shows the body ``distributed_test.BACKEND == "gloo"``: the Gloo
branch runs on pyc10d's group. Meant for single tests, with :func:`ungate_backend_gates`.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import time
import unittest
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch.testing._internal import common_distributed

import pyc10d.torch_backend

from .config import BACKENDS, BODY_AS_VARIABLE

BACKEND = os.environ.get("BACKEND", "")
if BACKEND not in BACKENDS:
    raise RuntimeError(
        f"tests.torch_suite.suite needs BACKEND set to one of {BACKENDS} before it is imported "
        "(use tests.torch_suite.config.suite_environment or tests.torch_suite.run_suite)"
    )


def admit_like_gloo(backend: str) -> None:
    """Add ``backend`` to torch's plugin set and to every feature set that lists Gloo."""
    features = common_distributed.DistTestCases.backend_feature
    features["plugin"].add(backend)
    for backends in features.values():
        if "gloo" in backends:
            backends.add(backend)


if BACKEND == pyc10d.torch_backend.BACKEND_NAME:
    pyc10d.torch_backend.register()
    admit_like_gloo(BACKEND)

BODY_AS = os.environ.get(BODY_AS_VARIABLE, "")
"""The backend name the test bodies see in the ranks ("" for ``BACKEND`` itself)."""

distributed_test = importlib.import_module("torch.testing._internal.distributed.distributed_test")

_REAP_SECONDS = 5.0
"""How long a rank left running at tear-down gets to exit after SIGTERM before SIGKILL."""


class DistributedSuite(
    distributed_test.TestDistBackend, distributed_test.DistributedTest._DistTestBase
):
    """Every ``distributed_test.py`` test, each run by ``WORLD_SIZE`` spawned ranks on
    ``BACKEND``."""

    def setUp(self) -> None:
        """torch's per-test setup, then the ranks, from a local spawn context (the process-wide
        start method, which torch's ``_spawn_processes`` would set, is left alone)."""
        super().setUp()
        self._start_processes(torch.multiprocessing.get_context("spawn").Process)

    def run_test(self, test_name: str, parent_pipe) -> None:
        """In a rank, once its group is up: the test body, seeing ``BODY_AS`` if one is set."""
        if BODY_AS:
            distributed_test.BACKEND = BODY_AS
        super().run_test(test_name, parent_pipe)

    def tearDown(self) -> None:
        """Reap every rank (killing one still running), torch's tear-down, drop the init file."""
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(_REAP_SECONDS)
            if process.is_alive():
                process.kill()
            process.join()
        super().tearDown()
        if os.path.exists(self.file_name):
            os.remove(self.file_name)


BACKEND_GATES = re.compile(
    "|".join(
        (
            r"Test requires backend \S+ to be one of \{'gloo'\}",
            r"Only MPI supports (CPU )?all_to_all",
            r"get_future is only supported on mpi, nccl and gloo",
            r"Only gloo backend supports timeouts",
            r"GLOO Batch Send Recv CPU",
            r"Only Gloo backend supports sparse all reduce",
            r"Only Nccl & Gloo backend support DistributedDataParallel",
        )
    )
)
"""The skip reasons of distributed_test.py that name the backends allowed (Gloo, MPI), rather
than a capability the machine lacks (CUDA devices, world size) or a known torch issue."""


def ungate_backend_gates() -> list[str]:
    """Lift the skips matching :data:`BACKEND_GATES` (not CUDA tests); the tests now runnable.

    Affects this process's :class:`DistributedSuite` only; call it in the parent, before the
    tests are instantiated. Skips that test the machine at run time (in the ranks) still apply.
    """
    lifted = []
    for name in unittest.TestLoader().getTestCaseNames(DistributedSuite):
        method = getattr(DistributedSuite, name)
        reason = getattr(method, "__unittest_skip_why__", "")
        if getattr(method, "_lifted_skip", ""):
            lifted.append(name)  # lifted by an earlier call
        elif "cuda" not in name and BACKEND_GATES.search(reason):
            setattr(DistributedSuite, name, _without_skip(method, reason))
            lifted.append(name)
    return lifted


def _without_skip(method: Callable[..., None], reason: str) -> Callable[..., None]:
    @functools.wraps(method)
    def ungated(self: unittest.TestCase) -> None:
        method(self)

    ungated.__dict__.pop("__unittest_skip__", None)
    ungated.__dict__.pop("__unittest_skip_why__", None)
    ungated._lifted_skip = reason  # type: ignore[attr-defined]
    return ungated


def set_test_timeout(seconds: int) -> None:
    """Bound each test: torch's harness kills the ranks of a test that runs past ``seconds``.

    The few tests torch gives a longer limit (``TIMEOUT_OVERRIDE``, at most 500 s) keep it.
    """
    common_distributed.TIMEOUT_DEFAULT = seconds


def select_tests(patterns: Sequence[str] = ()) -> list[str]:
    """The suite's test names (sorted), those matching any of ``patterns`` when given.

    A pattern with ``*``, ``?`` or ``[`` is a glob over the whole name; otherwise a substring.
    """
    names = unittest.TestLoader().getTestCaseNames(DistributedSuite)
    if not patterns:
        return list(names)
    return [name for name in names if any(_matches(name, pattern) for pattern in patterns)]


def _matches(name: str, pattern: str) -> bool:
    if any(char in pattern for char in "*?["):
        return fnmatchcase(name, pattern)
    return pattern in name


@dataclass
class Outcome:
    """How one test ended: ``status`` is "pass", "skip" or "fail"."""

    name: str
    status: str
    seconds: float
    detail: str = ""

    @property
    def summary(self) -> str:
        """The skip reason, or the last exception line of a failure (a rank's when it has one)."""
        if self.status != "fail":
            return self.detail.strip()
        lines = [line.strip() for line in self.detail.splitlines() if line.strip()]
        errors = [line for line in lines if _is_exception_line(line)]
        return errors[-1] if errors else (lines[-1] if lines else "")


def _is_exception_line(line: str) -> bool:
    head = line.split(":", 1)[0]
    return ":" in line and " " not in head and head.endswith(("Error", "Exception", "Failure"))


class RecordingResult(unittest.TestResult):
    """A ``TestResult`` keeping one :class:`Outcome` per test, reported as each test ends."""

    def __init__(self, on_outcome: Callable[[Outcome], None] | None = None) -> None:
        super().__init__()
        self.outcomes: list[Outcome] = []
        self._on_outcome = on_outcome
        self._started = time.monotonic()

    def startTest(self, test: unittest.TestCase) -> None:
        """Start the test's clock."""
        super().startTest(test)
        self._started = time.monotonic()

    def _record(self, test: unittest.TestCase, status: str, detail: str = "") -> None:
        name = getattr(test, "_testMethodName", str(test))
        outcome = Outcome(name, status, time.monotonic() - self._started, detail)
        self.outcomes.append(outcome)
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def addSuccess(self, test: unittest.TestCase) -> None:
        """A pass."""
        super().addSuccess(test)
        self._record(test, "pass")

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        """A skip, with its reason."""
        super().addSkip(test, reason)
        self._record(test, "skip", reason)

    def addFailure(self, test: unittest.TestCase, err) -> None:
        """A failed assertion: a failure."""
        super().addFailure(test, err)
        self._record(test, "fail", self.failures[-1][1])

    def addError(self, test: unittest.TestCase, err) -> None:
        """An exception (a rank's error or timeout arrives as one): a failure."""
        super().addError(test, err)
        self._record(test, "fail", self.errors[-1][1])

    def addExpectedFailure(self, test: unittest.TestCase, err) -> None:
        """A test marked ``expectedFailure`` that failed: a pass."""
        super().addExpectedFailure(test, err)
        self._record(test, "pass", "expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        """A test marked ``expectedFailure`` that passed: a failure."""
        super().addUnexpectedSuccess(test)
        self._record(test, "fail", "unexpected success")


def run_selected(
    names: Iterable[str], on_outcome: Callable[[Outcome], None] | None = None
) -> list[Outcome]:
    """Run the named tests in order (class set-up once), calling ``on_outcome`` after each."""
    suite = unittest.TestSuite(DistributedSuite(name) for name in names)
    result = RecordingResult(on_outcome)
    suite.run(result)
    return result.outcomes
