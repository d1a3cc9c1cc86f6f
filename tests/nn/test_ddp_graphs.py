"""DDP on graphs that are not the same every time: tensors created in forward, graphs that
differ across ranks, rank- and input-dependent control flow; and the profiler's DDP events.

Mirrors torch's ``_test_ddp_new_tensor_in_fwd`` (and its static-graph variant),
``test_different_graph_across_ranks`` and ``test_ddp_control_flow_different_across_ranks`` (at
debug levels OFF and DETAIL: with ``find_unused_parameters=False`` the unused parameter makes
the second forward raise torch's error, naming ``lin2.weight`` in DETAIL), and the DDP parts of
``_test_ddp_profiling``. torch's DDP runs the same iterations on a torch Gloo group in the same
processes: gradients agree to 1e-5, error messages are the same.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as TorchDDP

import pyc10d as dist
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import init
from tests.nn.torch_reference import assert_close_all, finish_both, init_both

TIMEOUT = 150


def _both(module_fn, **kwargs) -> tuple[nn.Module, nn.Module]:
    """pyc10d's and torch's DDP over two identical modules."""
    module = module_fn()
    return DDP(copy.deepcopy(module), **kwargs), TorchDDP(module, **kwargs)


def _compare_grads(ours: nn.Module, theirs: nn.Module, what: str) -> None:
    assert_close_all(
        [p.grad for p in ours.parameters()], [p.grad for p in theirs.parameters()], what
    )


# -- new tensors in forward -----------------------------------------------------------------------
class NewTensorModel(nn.Module):
    """torch's model of issue 60733: outputs include tensors made in forward (no grad_fn)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 10, bias=False)
        self.fc2 = nn.Linear(10, 10, bias=False)

    def forward(self, x, opt_1, opt_2, opt_nested):
        x = self.fc2(F.relu(self.fc1(x)))
        if opt_1 is None:
            opt_1 = torch.randn(1, 10)
        if opt_2 is None:
            opt_2 = torch.randn(1, 10)
        if opt_nested is None or not torch.is_tensor(opt_nested):
            opt_nested = torch.randn(1, 10)
        return x, opt_1, opt_2, {"tensor": opt_nested}


def _new_tensor_in_fwd(rank: int, static_graph: bool) -> None:
    for find_unused in (True, False):
        torch.manual_seed(0)
        pair = _both(
            NewTensorModel,
            broadcast_buffers=False,
            find_unused_parameters=find_unused,
            static_graph=static_graph,
        )
        opts = {id(ddp): [None, None, None] for ddp in pair}
        for step in range(2):
            x = torch.randn(1, 10, generator=torch.Generator().manual_seed(10 * step + rank))
            for ddp in pair:
                opt = opts[id(ddp)]
                ddp.zero_grad()
                out, opt[0], opt[1], opt[2] = ddp(x, opt_1=opt[0], opt_2=opt[1], opt_nested=opt[2])
                assert opt[0].grad_fn is None and opt[1].grad_fn is None
                assert opt[2]["tensor"].grad_fn is None
                out.mean().backward()
            _compare_grads(*pair, f"new tensor static={static_graph} unused={find_unused}")


# -- different graphs across ranks ------------------------------------------------------------
class ToyModel(nn.Module):
    """Rank 0 uses both layers, the others only the first."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(10, 10, bias=False)
        self.lin2 = nn.Linear(10, 10, bias=False)
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rank == 0:
            return self.lin2(F.relu(self.lin1(x)))
        return F.relu(self.lin1(x))


def _different_graph(rank: int, **kwargs) -> nn.Module:
    torch.manual_seed(31415)
    pair = _both(lambda: ToyModel(rank), gradient_as_bucket_view=True, **kwargs)
    x = torch.randn(20, 10, generator=torch.Generator().manual_seed(rank))
    for step in range(10):
        for ddp in pair:
            ddp(x).sum().backward()  # no zero_grad: accumulates, as torch's test does
        _compare_grads(*pair, f"different graph {kwargs} step {step}")
    ours, theirs = pair
    key = "has_rebuilt_buckets"
    assert ours._get_ddp_logging_data().get(key, 0) == theirs._get_ddp_logging_data().get(key, 0)
    return ours


def _different_graphs(rank: int) -> None:
    base = _different_graph(rank, find_unused_parameters=True)
    assert not base._get_ddp_logging_data().get("has_rebuilt_buckets", 0)
    static = _different_graph(rank, static_graph=True)
    assert static._get_ddp_logging_data().get("has_rebuilt_buckets", 0)
    assert_close_all(base.parameters(), static.parameters(), "base vs static")


# -- control flow that differs across ranks -------------------------------------------------
BATCH, DIM = 20, 10


class ControlFlowModel(nn.Module):
    """The second layer runs only on rank 1, and only for an all-ones input."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(10, 10, bias=False)
        self.lin2 = nn.Linear(10, 10, bias=False)
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.equal(x, torch.ones(BATCH, DIM)) and self.rank == 1:
            return self.lin2(F.relu(self.lin1(x)))
        return F.relu(self.lin1(x))


def _control_flow(rank: int, world_size: int) -> tuple[str, str]:
    torch.manual_seed(0)
    pair = _both(lambda: ControlFlowModel(rank), find_unused_parameters=True)
    random_input, ones = torch.randn(BATCH, DIM), torch.ones(BATCH, DIM)
    for i in range(6):
        for ddp in pair:
            ddp(random_input if i % 2 == 0 else ones).sum().backward()
        _compare_grads(*pair, f"control flow step {i}")
        expected = torch.tensor([world_size, i % 2], dtype=torch.int32)
        for ddp in pair:
            assert torch.equal(ddp.reducer._get_local_used_map(), expected)
    # without unused-parameter detection, lin2 (unused everywhere) fails the second forward
    errors = []
    for make in (DDP, TorchDDP):
        torch.manual_seed(0)
        model = make(ControlFlowModel(rank), find_unused_parameters=False)
        model(random_input).sum().backward()
        with pytest.raises(RuntimeError) as info:
            model(random_input).sum().backward()
        errors.append(str(info.value))
    return errors[0], errors[1]


# -- profiling ------------------------------------------------------------------------------------
def _profiled_names(ddp: nn.Module) -> set[str]:
    x = torch.rand(3, 10)
    with torch.autograd.profiler.profile() as prof:
        ddp(x).sum().backward()
    return {event.name for event in prof.function_events}


def _profiling() -> None:
    for make in (DDP, TorchDDP):
        plain = make(nn.Linear(10, 10, bias=False))
        for _ in range(2):
            plain(torch.rand(3, 10)).sum().backward()
        assert "DistributedDataParallel.forward" in _profiled_names(plain), make
        unused = make(nn.Linear(10, 10, bias=False), find_unused_parameters=True)
        names = _profiled_names(unused)
        assert any("search_unused_parameters" in name for name in names), (make, names)


def graphs(ctx, debug: str) -> tuple[str, str]:
    tdist = init_both(ctx)
    # set here: the rank's modules may have been imported before its environment was set
    dist.set_debug_level(dist.DebugLevel[debug])
    tdist.set_debug_level(getattr(tdist.DebugLevel, debug))
    for static_graph in (False, True):
        _new_tensor_in_fwd(ctx.rank, static_graph)
    _different_graphs(ctx.rank)
    errors = _control_flow(ctx.rank, ctx.world_size)
    _profiling()
    finish_both(tdist)
    return errors


def diverged(ctx) -> str:
    """Rank 0 uses lin2, the others do not, and nothing detects unused parameters: rank 0
    reduces lin2's bucket, which the others never launch. They raise torch's error at their next
    forward (DETAIL: naming lin2.weight) and leave; rank 0's allreduce then fails instead of
    hanging (torch's Gloo rank 0 would wait out its 30-minute timeout)."""
    init(ctx)
    dist.set_debug_level(dist.DebugLevel.DETAIL)
    ddp = DDP(ToyModel(ctx.rank), bucket_cap_mb=0.00001)  # a bucket per layer
    x = torch.randn(20, 10)
    with pytest.raises(RuntimeError) as info:
        for _ in range(2):
            ddp(x).sum().backward()
    if ctx.rank != 0:
        dist.destroy_process_group()
    return str(info.value)


def test_diverged_graphs_do_not_hang():
    for rank, message in enumerate(spawn(diverged, 3, timeout=TIMEOUT)):
        if rank == 0:
            assert "connection to rank" in message, message
        else:
            assert "Expected to have finished reduction" in message, message
            assert f"did not receive grad for rank {rank}: lin2.weight" in message, message


@world_sizes(2, 3)
@pytest.mark.parametrize("debug", ["OFF", "DETAIL"])
def test_graphs(world_size, debug):
    results = spawn(graphs, world_size, args=(debug,), timeout=TIMEOUT)
    for rank, (ours, theirs) in enumerate(results):
        assert ours == theirs
        assert "Expected to have finished reduction in the prior iteration" in ours
        assert f"Parameter indices which did not receive grad for rank {rank}: 1" in ours
        named = f"did not receive grad for rank {rank}: lin2.weight" in ours
        assert named == (debug == "DETAIL"), ours
