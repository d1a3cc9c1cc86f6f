"""Shared pytest setup: the modules marked ``both_transports`` run under both transports.

``tests`` is a package (its subfolders mirror ``pyc10d``'s), imported from the repository root,
which ``pythonpath = ["."]`` in pyproject.toml puts on ``sys.path``: plain ``pytest`` works as well
as ``python -m pytest``, and the ranks that :func:`pyc10d.testing.spawn` starts (with the parent's
``sys.path``) import their rank function's module by the same name (``tests.api.test_p2p``...).
"""

import pytest

# The collective suites run under both transports (issue: "the collective test suite runs under
# both"): ``auto`` (the default: shared-memory arena on one host) and ``tcp`` (the cross-host path).
# A module opts in with ``pytestmark = pytest.mark.both_transports``.
TRANSPORTS = ["auto", "tcp"]


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("both_transports") is not None:
        metafunc.fixturenames.append("pyc10d_transport")
        metafunc.parametrize("pyc10d_transport", TRANSPORTS)


@pytest.fixture(autouse=True)
def _select_transport(request, monkeypatch):
    """Set ``PYC10D_TRANSPORT`` for the ranks a transport-parametrized test spawns."""
    callspec = getattr(request.node, "callspec", None)
    mode = callspec.params.get("pyc10d_transport") if callspec is not None else None
    if mode is not None:
        monkeypatch.setenv("PYC10D_TRANSPORT", mode)
