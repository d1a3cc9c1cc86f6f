"""The option classes' names, defaults and setters (ReduceOp: tests/core/test_reduce_op.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as tdist

from pyc10d.core.reduce_op import RedOpType, ReduceOp, make_premul_sum
from pyc10d.process_group import options as o

# -- collective options ----------------------------------------------------------------------
ROOTED = [o.BroadcastOptions, o.ReduceOptions, o.GatherOptions, o.ScatterOptions]
REDUCING = [
    o.AllreduceOptions,
    o.AllreduceCoalescedOptions,
    o.ReduceOptions,
    o.ReduceScatterOptions,
]
ALL = [
    o.AllreduceOptions,
    o.AllreduceCoalescedOptions,
    o.BroadcastOptions,
    o.ReduceOptions,
    o.GatherOptions,
    o.ScatterOptions,
    o.ReduceScatterOptions,
    o.AllgatherOptions,
    o.AllToAllOptions,
    o.BarrierOptions,
]


def _public(obj) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_option_fields_match_torch(cls):
    torch_cls = getattr(torch._C._distributed_c10d, cls.__name__)
    torch_fields = _public(torch_cls())
    assert torch_fields <= _public(cls())
    ours = cls()
    assert ours.timeout == o.UNSET_TIMEOUT == torch_cls().timeout
    assert o.is_unset_timeout(ours.timeout)
    assert ours.asyncOp is True
    assert repr(ours).startswith(cls.__name__ + "(")


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_option_timeout_and_unknown_attributes(cls):
    opts = cls()
    opts.timeout = timedelta(milliseconds=1)
    assert opts.timeout == timedelta(milliseconds=1)
    assert o.resolve_timeout(opts.timeout, timedelta(seconds=9)) == timedelta(milliseconds=1)
    assert o.resolve_timeout(cls().timeout, timedelta(seconds=9)) == timedelta(seconds=9)
    with pytest.raises(TypeError, match="timedelta"):
        opts.timeout = 5
    with pytest.raises(AttributeError):
        opts.rootrank = 1  # a typo must not pass silently


@pytest.mark.parametrize("cls", ROOTED, ids=lambda c: c.__name__)
def test_root_fields(cls):
    opts = cls()
    assert opts.rootRank == 0
    opts.rootRank = 3
    assert opts.rootRank == 3
    with pytest.raises(TypeError, match="rootRank"):
        opts.rootRank = 1.5
    if hasattr(opts, "rootTensor"):
        assert opts.rootTensor == 0
        opts.rootTensor = 1
        assert opts.rootTensor == 1


@pytest.mark.parametrize("cls", REDUCING, ids=lambda c: c.__name__)
def test_reduce_op_field(cls):
    opts = cls()
    assert opts.reduceOp == ReduceOp.SUM and isinstance(opts.reduceOp, ReduceOp)
    opts.reduceOp = ReduceOp.MAX
    assert opts.reduceOp == ReduceOp.MAX and opts.reduceOp.op is RedOpType.MAX
    opts.reduceOp = tdist.ReduceOp.BXOR
    assert opts.reduceOp == ReduceOp.BXOR
    opts.reduceOp = make_premul_sum(2.0)
    assert opts.reduceOp.factor == 2.0
    with pytest.raises(TypeError):
        opts.reduceOp = "x"


def test_barrier_options():
    opts = o.BarrierOptions()
    assert opts.device_ids == [] and opts.device is None
    opts.device_ids = [0]
    assert opts.device_ids == [0]
    assert o.BarrierOptions().device_ids == []  # not shared between instances


def test_allreduce_coalesced_is_allreduce_options():
    assert issubclass(o.AllreduceCoalescedOptions, o.AllreduceOptions)


# -- group options ---------------------------------------------------------------------------
def test_group_options_defaults_match_torch():
    torch_opts = tdist.ProcessGroupGloo._Options()
    ours = o.Options()
    assert ours._timeout == ours.timeout == torch_opts._timeout == timedelta(minutes=30)
    assert ours._threads == ours.threads == torch_opts._threads == 2
    assert ours.backend == torch_opts.backend == "gloo"
    assert ours.group_name == torch_opts.group_name == ""
    assert ours._devices == [] and list(ours.global_ranks_in_group) == []
    assert ours.bind_host is None and ours.advertise_host is None


def test_group_options_setters():
    opts = o.Options()
    opts._timeout = 50.0  # seconds, as in torch's test_set_gloo_pg_timeout
    assert opts.timeout == timedelta(seconds=50)
    opts.timeout = timedelta(seconds=23)
    assert opts._timeout == timedelta(seconds=23)
    opts._threads = 8
    assert opts.threads == 8
    opts.bind_host = "127.0.0.1"
    opts.group_name = "g"
    assert "127.0.0.1" in repr(opts)
    with pytest.raises(ValueError, match="threads"):
        opts.threads = 0
    with pytest.raises(TypeError, match="threads"):
        opts.threads = 2.5
    with pytest.raises(ValueError, match="timeout"):
        opts.timeout = -1.0
    with pytest.raises(TypeError, match="timeout"):
        opts.timeout = "1s"
    with pytest.raises(AttributeError):
        opts.thread = 3


def test_group_options_constructor():
    opts = o.Options(timeout=5, threads=4, bind_host="0.0.0.0", advertise_host="10.0.0.1")
    assert (opts.timeout, opts.threads) == (timedelta(seconds=5), 4)
    assert (opts.bind_host, opts.advertise_host) == ("0.0.0.0", "10.0.0.1")
    assert tdist.constants.default_pg_timeout == o.DEFAULT_PG_TIMEOUT
