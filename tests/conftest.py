"""Shared pytest setup: make the checkout's ``pyc10d`` importable, here and in spawned ranks.

Ranks started by :func:`pyc10d.testing.spawn` import their rank function by module name with the
parent's ``sys.path``; pytest's default ``prepend`` import mode puts this ``tests/`` directory on
it (so ``test_*`` modules import as top-level modules), and the line below adds the repository
root, so that plain ``pytest`` works as well as ``python -m pytest`` without installing pyc10d.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pytest  # noqa: E402

# The collective suites run under both transports (issue: "the collective test suite runs under
# both"): ``auto`` (the default: shared-memory arena on one host) and ``tcp`` (the cross-host path).
TRANSPORT_MODULES = {"test_process_group", "test_process_group_seed", "test_api_collectives"}


def pytest_generate_tests(metafunc):
    if metafunc.module.__name__ in TRANSPORT_MODULES:
        metafunc.fixturenames.append("pyc10d_transport")
        metafunc.parametrize("pyc10d_transport", ["auto", "tcp"])


@pytest.fixture(autouse=True)
def _select_transport(request, monkeypatch):
    """Set ``PYC10D_TRANSPORT`` for the ranks a transport-parametrized test spawns."""
    callspec = getattr(request.node, "callspec", None)
    mode = callspec.params.get("pyc10d_transport") if callspec is not None else None
    if mode is not None:
        monkeypatch.setenv("PYC10D_TRANSPORT", mode)
