"""The ProcessGroup method surface of torch 2.13 (issue 18, items 3 and 4).

``timeout=`` on the collectives torch's pybind methods take it on (and used by the operation),
the 2.13 names beside the old ones, ``_get_backend``, ``ProcessGroup(rank, size)`` as the base of
Python backends, and ``alltoall_base`` refusing a non-contiguous input before sending anything.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as tdist

from pyc10d import HashStore, ProcessGroup, ReduceOp
from pyc10d.process_group import options as o
from pyc10d.testing import spawn, world_sizes

from tests.helpers.pg import make_pg

TIMEOUT = 90
NO_BACKEND = "No backend type associated with device type"


@pytest.fixture
def solo():
    """A one-rank group (everything completes locally)."""
    pg = ProcessGroup(HashStore(), 0, 1)
    yield pg
    pg.shutdown()


# -- timeout= --------------------------------------------------------------------------------
def _alone(pg, size):
    """Each collective of torch's timeout-taking forms, called by rank 0 alone, with a 300 ms
    timeout (the group's is 60 s): each must fail with its own, short timeout (rank 1 is the
    root where rank 0 could finish alone)."""
    short = timedelta(milliseconds=300)
    t = torch.ones(2)
    return {
        "allreduce kw": lambda: pg.allreduce(t, timeout=short),
        "allreduce pos": lambda: pg.allreduce([t], ReduceOp.SUM, short),
        "broadcast": lambda: pg.broadcast(t, 1, short),
        "reduce": lambda: pg.reduce(t, 0, ReduceOp.SUM, timeout=short),
        "allgather": lambda: pg.allgather([torch.zeros(2)] * size, t, timeout=short),
        "gather": lambda: pg.gather([torch.zeros(2)] * size, t, 0, timeout=short),
        "scatter": lambda: pg.scatter(torch.zeros(2), [], 1, timeout=short),
        "reduce_scatter": lambda: pg.reduce_scatter(t, [t] * size, ReduceOp.SUM, short),
        "alltoall_base": lambda: pg.alltoall_base(
            torch.zeros(size), torch.ones(size), [], [], timeout=short
        ),
        "all_to_all_single": lambda: pg.all_to_all_single(
            torch.zeros(size), torch.ones(size), [], [], short
        ),
        "barrier": lambda: pg.barrier(timeout=short),
    }


def timeout_keyword(ctx):
    pg = make_pg(ctx, timeout=60)
    if ctx.rank == 0:
        for name, call in _alone(pg, ctx.world_size).items():
            start = time.monotonic()
            with pytest.raises(RuntimeError, match="Timed out waiting 300ms"):
                call().wait()
                pytest.fail(f"{name} finished without rank 1")
            assert time.monotonic() - start < 20, name  # the call's timeout, not the group's
        ctx.store.set("timeouts-checked", "1")
    else:
        ctx.store.wait(["timeouts-checked"], timedelta(seconds=60))
    pg.shutdown()


def test_timeout_keyword_is_used():
    spawn(timeout_keyword, 2, timeout=TIMEOUT)


def test_timeout_forms_complete(solo):
    t, second = torch.ones(2), timedelta(seconds=5)
    assert solo.allreduce(t, ReduceOp.MAX, timeout=second).wait()
    assert solo.allreduce([t], op=ReduceOp.SUM, timeout=None).wait()
    assert solo.broadcast(t, root=0, timeout=second).wait()
    assert solo.barrier(second).wait() and solo.barrier(timeout=second).wait()
    assert solo.allgather([torch.zeros(2)], t, second).wait()
    assert t.tolist() == [1.0, 1.0]


def test_timeout_with_options_object_is_refused(solo):
    opts = o.AllreduceOptions()
    with pytest.raises(TypeError, match="options object"):
        solo.allreduce([torch.ones(1)], opts, timeout=timedelta(seconds=1))
    with pytest.raises(TypeError, match="timedelta"):
        solo.barrier(timeout=5)
    assert opts.timeout == o.UNSET_TIMEOUT  # the caller's object is untouched
    assert solo._get_sequence_number_for_group() == 0


# -- names -----------------------------------------------------------------------------------
ALIASES = {
    "all_to_all_single": "alltoall_base",
    "all_gather_single": "_allgather_base",
    "reduce_scatter_single": "_reduce_scatter_base",
    "all_gather_single_coalesced": "allgather_into_tensor_coalesced",
    "reduce_scatter_single_coalesced": "reduce_scatter_tensor_coalesced",
}


@pytest.mark.parametrize(("new", "old"), ALIASES.items())
def test_torch_213_names_alias_the_old_ones(new, old):
    assert hasattr(tdist.ProcessGroup, new) and hasattr(tdist.ProcessGroup, old)
    assert getattr(ProcessGroup, new) is getattr(ProcessGroup, old)


def test_single_names_run(solo):
    out = torch.zeros(3)
    solo.all_gather_single(out, torch.arange(3.0)).wait()
    assert out.tolist() == [0.0, 1.0, 2.0]
    small = torch.zeros(3)
    solo.reduce_scatter_single(small, torch.arange(3.0)).wait()
    assert small.tolist() == [0.0, 1.0, 2.0]
    outs = [torch.zeros(2)]
    solo.all_gather_single_coalesced(outs, [torch.ones(2)]).wait()
    solo.reduce_scatter_single_coalesced([torch.zeros(2)], [torch.ones(2)]).wait()
    assert outs[0].tolist() == [1.0, 1.0]


def test_get_backend(solo):
    assert solo._get_backend(torch.device("cpu")) is solo
    assert solo._get_backend(torch.device("cuda")) is solo  # staged through host, as Gloo
    with pytest.raises(RuntimeError, match=f"{NO_BACKEND} meta"):
        solo._get_backend(torch.device("meta"))
    assert [d.type for d in solo._device_types] == ["cuda", "cpu"]
    assert solo.name() == solo.getBackendName() == solo._get_backend_name() == "pyc10d"


# -- ProcessGroup(rank, size) ----------------------------------------------------------------
def test_bare_group_like_torch():
    pg = ProcessGroup(1, 4)
    assert (pg.rank(), pg.size(), pg.name()) == (1, 4, "undefined")
    assert pg._device_types == []
    with pytest.raises(RuntimeError, match=f"{NO_BACKEND} cpu"):
        pg.allreduce([torch.ones(1)])
    with pytest.raises(RuntimeError, match=f"{NO_BACKEND} cpu"):
        pg.barrier()
    with pytest.raises(RuntimeError, match=f"{NO_BACKEND} cpu"):
        pg._get_backend(torch.device("cpu"))
    pg.shutdown()  # nothing to close
    pg.abort()


class _PythonBackend(ProcessGroup):
    """A Python backend as torch's tests write them (``super().__init__(rank, size)``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen = []

    def getBackendName(self) -> str:
        return "Dummy"

    def allreduce(self, tensor_list, opts=None):
        self.seen.append(opts)
        for tensor in tensor_list:
            tensor.add_(2)
        return None


def test_python_backend_subclass():
    pg = _PythonBackend(0, 2)
    assert pg.name() == "Dummy" and pg._get_backend_name() == "Dummy"
    t = torch.zeros(1)
    pg.allreduce([t])
    assert t.item() == 2.0 and pg.seen == [None]


# -- non-contiguous alltoall input -----------------------------------------------------------
def test_alltoall_base_contiguity(solo):
    with pytest.raises(ValueError, match=r"^Tensors must be contiguous$"):
        solo.alltoall_base(torch.zeros(2, 2), torch.ones(2, 2).t(), [], [])
    with pytest.raises(ValueError, match=r"^Tensors must be contiguous$"):  # before type checks
        solo.alltoall_base(torch.zeros(2, 2), torch.ones(2, 2, dtype=torch.int64).t(), [], [])
    assert solo._get_sequence_number_for_group() == 0
    out = torch.zeros(2, 2).t()  # a non-contiguous output is accepted, as in torch
    solo.alltoall_base(out, torch.arange(4.0).view(2, 2), [], []).wait()
    assert out.tolist() == [[0.0, 1.0], [2.0, 3.0]]
    channels_last = torch.arange(16.0).view(1, 4, 2, 2).to(memory_format=torch.channels_last)
    result = torch.zeros(1, 4, 2, 2)
    solo.alltoall_base(result, channels_last, [], []).wait()  # torch accepts it too
    assert torch.equal(result, channels_last)


def alltoall_base_not_contiguous(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    if rank == size - 1:  # only this rank passes bad input
        bad = torch.zeros(2, size).t()
        with pytest.raises(ValueError, match=r"^Tensors must be contiguous$"):
            pg.alltoall_base(torch.zeros(size, 2), bad, [], [])
        with pytest.raises(ValueError, match=r"^Tensors must be contiguous$"):
            pg.all_to_all_single(torch.zeros(size, 2), bad, [1] * size, [1] * size)
    source = torch.arange(size, dtype=torch.float32) + 10 * rank
    out = torch.zeros(size)
    pg.alltoall_base(out, source, [], []).wait()  # pairs with the others' first call
    assert out.tolist() == [10.0 * r + rank for r in range(size)]
    assert pg._get_sequence_number_for_group() == 1
    pg.shutdown()


@world_sizes(2, 3)
def test_alltoall_base_not_contiguous_keeps_ranks_in_step(world_size):
    spawn(alltoall_base_not_contiguous, world_size, timeout=TIMEOUT)
