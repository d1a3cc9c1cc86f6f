"""``PostLocalSGDOptimizer``: parity with a hand-run averager and with torch's, and reloading.

Mirrors torch's ``_test_post_localSGD_optimizer_parity`` (DDP + optimizer + averager by hand
against DDP + PostLocalSGDOptimizer) and ``_test_post_localSGD_optimizer_step_reload``, and runs
torch's DDP, post-local SGD hook and optimizer on a torch Gloo group in the same process: with
each rank's data different and ``LOCAL_WORLD_SIZE=1`` (no gradient averaging once local SGD
starts), the parameters must match torch's at every step.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import pyc10d as dist
from pyc10d.algorithms.ddp_comm_hooks.post_localSGD_hook import (
    PostLocalSGDState,
    post_localSGD_hook,
)
from pyc10d.algorithms.model_averaging import averagers
from pyc10d.algorithms.model_averaging.hierarchical_model_averager import (
    HierarchicalModelAverager,
)
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.optim import PostLocalSGDOptimizer
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import init, init_both

TIMEOUT = 120
TOL = dict(atol=1e-5, rtol=1e-5)
LR = 0.03
_TORCH_GROUPS_KEPT: list = []  # see tests/algorithms/test_ddp_comm_hooks.py


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(2, 10), nn.ReLU(), nn.Linear(10, 50), nn.ReLU(), nn.Linear(50, 4)
    )


def _train_step(optimizer, net: nn.Module, rank: int, step: int) -> None:
    """torch's _perform_a_train_step, on this rank's own data."""
    gen = torch.Generator().manual_seed(100 * step + rank)
    x, y = torch.randn(4, 2, generator=gen), torch.randn(4, 4, generator=gen)
    optimizer.zero_grad()
    nn.functional.mse_loss(net(x), y).backward()
    optimizer.step()


def _averagers(kind: str, n: int, torch_side: bool = False):
    """A fresh averager of ``kind`` (ours, or torch's): periodic, or two-level hierarchical."""
    if torch_side:
        from torch.distributed.algorithms.model_averaging import averagers as module
        from torch.distributed.algorithms.model_averaging import hierarchical_model_averager as h

        periodic, hierarchical = module.PeriodicModelAverager, h.HierarchicalModelAverager
    else:
        periodic, hierarchical = averagers.PeriodicModelAverager, HierarchicalModelAverager
    if kind == "periodic":
        return periodic(period=4, warmup_steps=10)
    return hierarchical(OrderedDict([(2, 1), (4, n)]), warmup_steps=4)


def _parity_by_hand(ctx, kind: str) -> None:
    """torch's parity test on our side: averager by hand, or inside the optimizer."""
    rank = ctx.rank
    for grad_is_view in (False, True):
        net = DDP(_net(), gradient_as_bucket_view=grad_is_view)
        averager = _averagers(kind, ctx.world_size)
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        wrapped_net = DDP(_net(), gradient_as_bucket_view=grad_is_view)
        averager2 = _averagers(kind, ctx.world_size)
        wrapped = PostLocalSGDOptimizer(torch.optim.SGD(wrapped_net.parameters(), lr=LR), averager2)
        for step in range(20):
            _train_step(opt, net, rank, step)
            averager.average_parameters(net.parameters())
            _train_step(wrapped, wrapped_net, rank, step)
            for p1, p2 in zip(net.parameters(), wrapped_net.parameters(), strict=True):
                assert torch.equal(p1.data, p2.data)
        assert averager.step == averager2.step == 20


def _optimizer_parity(ctx, kind: str) -> None:
    import torch.distributed as tdist
    from torch.distributed.algorithms.ddp_comm_hooks import post_localSGD_hook as theirs_hook
    from torch.distributed.optim import PostLocalSGDOptimizer as TorchPostLocalSGDOptimizer

    init_both(ctx)
    _parity_by_hand(ctx, kind)
    rank, n = ctx.rank, ctx.world_size
    start = 10 if kind == "periodic" else 4  # the averager's warm-up
    ours = DDP(_net())
    ours.register_comm_hook(PostLocalSGDState(None, None, start), post_localSGD_hook)
    ours_opt = PostLocalSGDOptimizer(
        torch.optim.SGD(ours.parameters(), lr=LR, momentum=0.9), _averagers(kind, n)
    )
    singles, _ = tdist.new_subgroups(group_size=1)  # what LOCAL_WORLD_SIZE=1 gives ours
    theirs = torch.nn.parallel.DistributedDataParallel(_net())
    theirs.register_comm_hook(
        theirs_hook.PostLocalSGDState(None, singles, start), theirs_hook.post_localSGD_hook
    )
    theirs_opt = TorchPostLocalSGDOptimizer(
        torch.optim.SGD(theirs.parameters(), lr=LR, momentum=0.9), _averagers(kind, n, True)
    )
    spread = []
    for step in range(20):
        _train_step(ours_opt, ours, rank, step)
        _train_step(theirs_opt, theirs, rank, step)
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, **TOL, msg=f"step {step}")
        spread.append(_spread(ours.module[0].weight))
    assert ours_opt.averager.step == theirs_opt.averager.step == 20
    # local SGD really ran: the ranks drift apart between averagings, agree after each
    assert max(spread[:start]) < 1e-6 and max(spread[start:]) > 1e-4
    assert spread[18 if kind == "periodic" else 16] < 1e-6  # a global averaging step
    _TORCH_GROUPS_KEPT.append(tdist.group.WORLD)
    tdist.destroy_process_group()
    dist.destroy_process_group()


def _spread(tensor: torch.Tensor) -> float:
    """The largest difference between this tensor on any rank and on rank 0."""
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.detach().contiguous())
    return max((g - gathered[0]).abs().max().item() for g in gathered)


@pytest.mark.parametrize(
    ("world_size", "kind"),
    [(2, "periodic"), (3, "periodic"), (2, "hierarchical")],
    ids=["2-periodic", "3-periodic", "2-hierarchical"],
)
def test_same_as_torch(world_size, kind):
    spawn(_optimizer_parity, world_size, args=(kind,), timeout=TIMEOUT, env={"LOCAL_WORLD_SIZE": 1})


def _step_reload(ctx) -> None:
    """torch's step-reload test, and a state dict of torch's optimizer loaded into ours."""
    from torch.distributed.algorithms.model_averaging import averagers as torch_averagers
    from torch.distributed.optim import PostLocalSGDOptimizer as TorchPostLocalSGDOptimizer

    init(ctx)
    rank = ctx.rank
    net = DDP(_net())
    averager = averagers.PeriodicModelAverager(period=4, warmup_steps=10)
    opt = PostLocalSGDOptimizer(torch.optim.SGD(net.parameters(), lr=LR, momentum=0.5), averager)
    averager2 = averagers.PeriodicModelAverager(period=4, warmup_steps=10)
    dummy = PostLocalSGDOptimizer(torch.optim.SGD(net.parameters(), lr=LR), averager2)
    for step in range(20):
        _train_step(opt, net, rank, step)
    path = ctx.path("checkpoint.pt")
    if rank == 0:
        torch.save({"optimizer_state_dict": opt.state_dict()}, path)
    dist.barrier()
    checkpoint = torch.load(path)
    dummy.load_state_dict(checkpoint["optimizer_state_dict"])
    assert averager2.step == averager.step == 20
    assert dummy.param_groups[0]["momentum"] == 0.5  # the loaded groups, as the local optimizer's
    for p in net.parameters():
        torch.testing.assert_close(
            dummy.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"]
        )

    del checkpoint["optimizer_state_dict"]["step"]
    with pytest.warns(UserWarning, match="does not contain a step counter for an averager"):
        dummy.load_state_dict(checkpoint["optimizer_state_dict"])
    assert averager2.step == 0

    # torch's optimizer saves the same format: its state dict loads into ours
    theirs = TorchPostLocalSGDOptimizer(
        torch.optim.SGD(net.parameters(), lr=LR, momentum=0.5),
        torch_averagers.PeriodicModelAverager(period=4, process_group=object()),
    )
    theirs.averager.step = 7
    state_dict = theirs.state_dict()
    assert state_dict.keys() == opt.state_dict().keys()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dummy.load_state_dict(state_dict)
    assert averager2.step == 7
    dist.destroy_process_group()


@world_sizes(2, 3)
def test_step_reload(world_size):
    spawn(_step_reload, world_size, timeout=TIMEOUT)


# -- in this process -----------------------------------------------------------------------------
class _Recorder:
    """A stand-in averager recording what it was given."""

    def __init__(self) -> None:
        self.step = 0
        self.calls: list = []

    def average_parameters(self, params) -> None:
        self.calls.append(params)
        self.step += 1


def test_delegates_to_the_local_optimizer():
    layer = nn.Linear(3, 2)
    local = torch.optim.SGD([layer.weight], lr=0.5, momentum=0.9)
    recorder = _Recorder()
    opt = PostLocalSGDOptimizer(local, recorder)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is local.param_groups and repr(opt) == repr(local)
    layer(torch.ones(1, 3)).sum().backward()
    before = layer.weight.detach().clone()
    opt.step()
    torch.testing.assert_close(layer.weight.detach(), before - 0.5 * layer.weight.grad)
    assert recorder.calls == [local.param_groups] and opt.state is local.state
    assert set(opt.state) == {layer.weight}

    opt.zero_grad()
    assert layer.weight.grad is None
    layer(torch.ones(1, 3)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight))

    opt.add_param_group({"params": [layer.bias], "lr": 0.1})
    assert [len(g["params"]) for g in local.param_groups] == [1, 1]
    assert opt.state_dict()["step"] == 1 and "param_groups" in opt.state_dict()

    # after load_state_dict the local optimizer's groups are new lists: still the ones we show
    state_dict = opt.state_dict()
    state_dict["param_groups"][1]["lr"] = 0.25
    opt.load_state_dict(state_dict)
    assert opt.param_groups is local.param_groups and opt.param_groups[1]["lr"] == 0.25

    # an LR scheduler drives it as any optimizer
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()
    scheduler.step()
    assert local.param_groups[0]["lr"] == 0.25 and recorder.step == 2
