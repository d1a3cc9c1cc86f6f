"""A fast subset of torch's own ``distributed_test.py`` suite, on the ``pyc10d`` backend.

Each test below is one of torch's tests (``DistributedTest._DistTestBase``), run by torch's
spawn-based ``MultiProcessTestCase`` with two ranks that call
``torch.distributed.init_process_group("pyc10d")``. The full suite, and the comparison with
Gloo, is ``python -m tests.torch_suite.run_suite`` (see ``RESULTS.md``).

The fixture lifts the skips by which ``distributed_test.py`` reserves some CPU tests for Gloo or
MPI by name (``suite.ungate_backend_gates``): ``all_to_all`` and ``all_reduce_coalesced`` run here.

Only this module's functions are collected: torch's test class is built in
``tests.torch_suite.suite`` (not a test module), imported by the fixture, never into this
module's namespace.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from types import ModuleType

import pytest

from .config import suite_environment

pytest.importorskip("expecttest", reason="torch's distributed_test.py imports expecttest")

HARNESS_TIMEOUT = 60
"""Seconds torch's harness lets one test run before it kills the ranks."""

pytestmark = [
    pytest.mark.timeout(HARNESS_TIMEOUT + 30),
    # importing torch's distributed_test.py scripts modules with the deprecated torch.jit API
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning"),
]

FAST_SUBSET = (
    "test_all_reduce_sum",
    "test_all_reduce_full_group_sum",
    "test_all_reduce_coalesced_full_group_sum",
    "test_broadcast",
    "test_all_gather",
    "test_all_gather_object_default_pg",
    "test_gather",
    "test_all_to_all_full_group",
    "test_all_to_all_single_unequal_split",
    "test_barrier",
    "test_irecv",
    "test_get_future",
    "test_DistributedDataParallelCPU",
)
"""Representative tests that run on pyc10d: collectives (the ``full_group`` ones on a
``new_group``), isend/irecv, barrier, Work futures, DDP: 55-100 s on two cores.
(``distributed_test.py``'s reduce-scatter tests are all CUDA-only, so none is here.)"""


@pytest.fixture(scope="module")
def torch_suite() -> Iterator[ModuleType]:
    """``tests.torch_suite.suite`` imported for pyc10d, within the suite's environment."""
    with suite_environment("pyc10d"):
        suite = importlib.import_module("tests.torch_suite.suite")
        if suite.BACKEND != "pyc10d":
            pytest.fail(f"tests.torch_suite.suite was imported for {suite.BACKEND!r}")
        suite.set_test_timeout(HARNESS_TIMEOUT)
        suite.ungate_backend_gates()
        yield suite


@pytest.mark.parametrize("name", FAST_SUBSET)
def test_torch_distributed_test(torch_suite: ModuleType, name: str) -> None:
    """torch's test ``name`` passes on pyc10d (a skip counts as a failure: each must run)."""
    (outcome,) = torch_suite.run_selected([name])
    assert outcome.status == "pass", f"{name}: {outcome.status}: {outcome.detail}"
