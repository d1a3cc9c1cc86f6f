"""torch 2.13 compatibility of the module API (issue 18, items 1, 3, 4 and 5).

Groups made with the ``ProcessGroup`` constructor (and Python backends built on
``ProcessGroup(rank, size)``) work with the module functions as in torch; ``all_to_all_single``
refuses a non-contiguous input with torch's ValueError on that rank only, before anything is
sent; ``_make_nccl_premul_sum`` ops run in ``all_reduce``; the ``Backend`` registry that torch's
tests read is there.
"""

from __future__ import annotations

import copy
import warnings
from datetime import timedelta

import pytest
import torch

import pyc10d as dist
from pyc10d.testing import spawn, world_sizes

TIMEOUT = 90
NOT_REGISTERED = "is not registered, please create group with torch.distributed.new_group API"


def _init(ctx) -> None:
    dist.init_process_group(
        backend="gloo",
        init_method=ctx.init_method,
        rank=ctx.rank,
        world_size=ctx.world_size,
        timeout=timedelta(seconds=30),
    )


# -- item 1: a group made with the constructor ------------------------------------------------
def _collectives_on(pg, rank: int, size: int) -> None:
    """The module collectives torch runs on an unregistered group (no global rank needed)."""
    dist.barrier(group=pg)
    t = torch.tensor([rank + 1.0])
    dist.all_reduce(t, group=pg)
    assert t.item() == size * (size + 1) / 2
    t = torch.tensor([float(rank)])
    dist.broadcast(t, group_src=size - 1, group=pg)
    assert t.item() == size - 1
    gathered = [torch.zeros(1) for _ in range(size)]
    dist.all_gather(gathered, torch.tensor([rank * 10.0]), group=pg)
    assert [g.item() for g in gathered] == [r * 10.0 for r in range(size)]
    out = torch.zeros(size)
    dist.all_to_all_single(out, torch.arange(size, dtype=torch.float32) + 100 * rank, group=pg)
    assert out.tolist() == [100.0 * r + rank for r in range(size)]
    work = dist.all_reduce(torch.ones(1), group=pg, async_op=True)
    assert isinstance(work, dist.Work) and work.wait()


def constructor_group(ctx):
    _init(ctx)
    rank, size = ctx.rank, ctx.world_size
    pg = dist.ProcessGroup(dist.PrefixStore("ctor", ctx.store), rank, size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch 2.13 warns about none of this
        _collectives_on(pg, rank, size)
        assert dist.get_world_size(pg) == dist.get_world_size(group=pg) == size
    # what torch refuses: translating global ranks through the (absent) registry entry
    for call in (
        lambda: dist.get_rank(pg),
        lambda: dist.get_group_rank(pg, 0),
        lambda: dist.get_global_rank(pg, 0),
        lambda: dist.broadcast(torch.zeros(1), src=0, group=pg),
        lambda: dist.reduce(torch.zeros(1), dst=0, group=pg),
    ):
        with pytest.raises(ValueError, match=NOT_REGISTERED):
            call()
    with pytest.raises(ValueError, match="is not initialized in the world group map"):
        dist.get_backend(pg)
    # the refusals sent nothing: the group still works, in step on every rank
    _collectives_on(pg, rank, size)
    seq = pg._get_sequence_number_for_group()
    dist.all_gather_object(seqs := [None] * size, seq)
    assert seqs == [seq] * size
    pg.shutdown()
    with pytest.raises(ValueError, match=NOT_REGISTERED):
        dist.all_reduce(torch.ones(1), group=pg)  # shut down: as if destroyed
    dist.destroy_process_group()
    return True


@world_sizes(2, 3)
def test_constructor_group_with_module_functions(world_size):
    assert spawn(constructor_group, world_size, timeout=TIMEOUT) == [True] * world_size


def destroyed_group(ctx):
    _init(ctx)
    group = dist.new_group()
    dist.all_reduce(torch.ones(1), group=group)
    dist.destroy_process_group(group)
    for call in (
        lambda: dist.all_reduce(torch.ones(1), group=group),
        lambda: dist.barrier(group=group),
        lambda: dist.get_rank(group),
    ):
        with pytest.raises(ValueError, match=NOT_REGISTERED):
            call()
    dist.barrier()  # the default group is unaffected
    dist.destroy_process_group()


def test_destroyed_group_is_not_registered():
    spawn(destroyed_group, 2, timeout=TIMEOUT)


class DummyWork(dist.Work):
    """A finished Work, like torch's test's ``DummyWork``."""

    def __init__(self, value) -> None:
        super().__init__("dummy", -1, [value])
        self._complete(value)


class DummyProcessGroup(dist.ProcessGroup):
    """torch's test_c10d_common ``DummyProcessGroup``: a Python backend on ``ProcessGroup``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.global_rank, self.group_size = args[0], args[1]
        self.called: list[str] = []

    def rank(self) -> int:
        return self.global_rank

    def size(self) -> int:
        return self.group_size

    def getBackendName(self) -> str:
        return "Dummy"

    def allreduce(self, tensor_list, opts=None):
        self.called.append("allreduce")
        for tensor in tensor_list:
            tensor.add_(2)
        return DummyWork(tensor_list)

    def broadcast(self, tensor_list, opts=None):
        self.called.append("broadcast")
        for tensor in tensor_list:
            tensor.add_(1)
        return DummyWork(tensor_list)

    def all_gather_single(self, output_tensor, input_tensor, opts=None):
        self.called.append("all_gather_single")
        for chunk in output_tensor.chunk(self.size()):
            chunk.copy_(input_tensor)
        return DummyWork([output_tensor])

    def reduce_scatter_single(self, output_tensor, input_tensor, opts=None):
        self.called.append("reduce_scatter_single")
        output_tensor.copy_(input_tensor.chunk(self.size())[self.rank()])
        return DummyWork([output_tensor])

    def all_to_all_single(self, output, input, output_split_sizes, input_split_sizes, opts=None):
        self.called.append("all_to_all_single")
        output.copy_(input)
        return DummyWork([output])

    def barrier(self, opts=None):
        self.called.append("barrier")
        return DummyWork([])


def test_python_backend_subclass_dispatches():
    dpg = DummyProcessGroup(1, 3)
    assert dpg.name() == "Dummy" and dpg.rank() == 1 and dpg.size() == 3
    assert dist.get_world_size(dpg) == 3
    t = torch.zeros(2)
    dist.all_reduce(t, group=dpg)
    assert t.tolist() == [2.0, 2.0]
    dist.broadcast(t, group_src=0, group=dpg)
    assert t.tolist() == [3.0, 3.0]
    out = torch.zeros(6)
    dist.all_gather_single(out, torch.ones(2), group=dpg)
    assert out.tolist() == [1.0] * 6
    small = torch.zeros(2)
    dist.reduce_scatter_single(small, torch.arange(6.0), group=dpg)
    assert small.tolist() == [2.0, 3.0]
    out = torch.zeros(3)
    dist.all_to_all_single(out, torch.arange(3.0), group=dpg)
    assert out.tolist() == [0.0, 1.0, 2.0]
    dist.barrier(group=dpg)
    assert dpg.called == [
        "allreduce",
        "broadcast",
        "all_gather_single",
        "reduce_scatter_single",
        "all_to_all_single",
        "barrier",
    ]
    with pytest.raises(ValueError, match=NOT_REGISTERED):
        dist.broadcast(t, src=0, group=dpg)  # needs the registry, as in torch


# -- item 4: all_to_all_single with a non-contiguous input -----------------------------------
def alltoall_not_contiguous(ctx):
    _init(ctx)
    rank, size = ctx.rank, ctx.world_size
    bad = torch.zeros(2, size).t()  # (size, 2), not contiguous
    assert not bad.is_contiguous()
    if rank == 0:  # only rank 0 passes bad input; the others call once, with good input
        for call in (
            lambda: dist.all_to_all_single(torch.zeros(size, 2), bad),
            lambda: dist.all_to_all_single(torch.zeros(size, 2), bad, [1] * size, [1] * size),
            lambda: dist.all_to_all_single(torch.zeros(size, 2), bad, async_op=True),
        ):
            with pytest.raises(ValueError, match=r"^Tensors must be contiguous$"):
                call()
    # rank 0's valid call pairs with the others' first one: its refusals sent nothing
    source = torch.arange(size * 2, dtype=torch.float32).view(size, 2) + 100 * rank
    out = torch.zeros(2, size).t()  # a non-contiguous output is fine, as in torch
    dist.all_to_all_single(out, source)
    expected = torch.stack(
        [torch.tensor([2.0 * rank, 2.0 * rank + 1]) + 100 * r for r in range(size)]
    )
    assert torch.equal(out, expected)
    seq = dist.group.WORLD._get_sequence_number_for_group()
    dist.all_gather_object(seqs := [None] * size, seq)
    assert seqs == [seq] * size
    dist.destroy_process_group()


@world_sizes(2, 3)
def test_all_to_all_single_not_contiguous(world_size):
    spawn(alltoall_not_contiguous, world_size, timeout=TIMEOUT)


# -- item 5: PREMUL_SUM ops in all_reduce ----------------------------------------------------
def premul_sum(ctx):
    _init(ctx)
    rank, size = ctx.rank, ctx.world_size
    total = size * (size + 1) / 2
    for op, factor in (
        (dist._make_nccl_premul_sum(2.0), 2.0),
        (dist._make_nccl_premul_sum(torch.tensor(0.5)), 0.5),
        (dist.ReduceOp.PREMUL_SUM(3.0), 3.0),
    ):
        assert isinstance(op, dist.ReduceOp)
        t = torch.tensor([rank + 1.0, 2.0 * (rank + 1)])
        dist.all_reduce(t, op=op)
        assert t.tolist() == [factor * total, factor * 2 * total]
    dist.destroy_process_group()


@world_sizes(2, 3)
def test_premul_sum_in_all_reduce(world_size):
    spawn(premul_sum, world_size, timeout=TIMEOUT)


# -- item 3: the Backend registry ------------------------------------------------------------
@pytest.fixture
def saved_registry():
    """Restore the class-level registry after a test changes it (as torch's tests do)."""
    saved = {
        name: copy.deepcopy(getattr(dist.Backend, name))
        for name in (
            "_plugins",
            "backend_list",
            "backend_capability",
            "backend_type_map",
            "default_device_backend_map",
        )
    }
    had_dummy = hasattr(dist.Backend, "DUMMY")
    yield
    for name, value in saved.items():
        setattr(dist.Backend, name, value)
    if not had_dummy and hasattr(dist.Backend, "DUMMY"):
        delattr(dist.Backend, "DUMMY")


def test_backend_registry_defaults():
    backend = dist.Backend
    assert backend.UNDEFINED in backend.backend_list and backend.GLOO in backend.backend_list
    assert backend.default_device_backend_map["cpu"] == backend.GLOO
    assert backend.backend_capability[backend.GLOO] == ["cpu", "cuda"]
    assert backend.backend_type_map[backend.GLOO] == dist.ProcessGroup.BackendType.GLOO
    assert backend.backend_type_map[backend.PYC10D] == dist.ProcessGroup.BackendType.CUSTOM
    assert int(dist.ProcessGroup.BackendType.CUSTOM) == 6 and dist.ProcessGroup.GLOO == 1


@pytest.mark.usefixtures("saved_registry")
def test_register_backend_like_torch():
    def create_dummy(store, rank, size, timeout):
        return DummyProcessGroup(rank, size)

    with pytest.warns(UserWarning, match="Device capability of dummy unspecified"):
        dist.Backend.register_backend("dummy", create_dummy)
    assert dist.Backend.DUMMY == "dummy" and dist.Backend("DUMMY") == "dummy"
    assert "dummy" in dist.Backend.backend_list
    assert dist.Backend._plugins["DUMMY"].creator_fn is create_dummy
    assert dist.Backend._plugins["DUMMY"].extended_api is False
    assert dist.Backend.backend_capability["dummy"] == ["cpu", "cuda"]
    assert dist.Backend.backend_type_map["dummy"] == dist.ProcessGroup.BackendType.CUSTOM


@pytest.mark.usefixtures("saved_registry")
def test_register_backend_with_single_device_string():
    dist.Backend.register_backend("dummy", lambda *a: None, devices="custom_device")
    assert dist.Backend.default_device_backend_map["custom_device"] == "dummy"
    assert dist.Backend.backend_capability["dummy"] == ["custom_device"]
    assert all(dist.Backend.default_device_backend_map.get(c) != "dummy" for c in "custom")
    assert dist.Backend.default_device_backend_map["cpu"] == "gloo"  # taken: not remapped
