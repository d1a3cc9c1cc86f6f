"""Optimizers applied in backward (``torch.distributed.optim._apply_optimizer_in_backward``)
under pyc10d's DDP, against torch's DDP on a Gloo group in the same processes.

Mirrors torch's ``_test_ddp_apply_optim_in_backward`` (SGD and Adam, optimizers applied before
or after wrapping, ``gradient_as_bucket_view`` on and off, two models) and
``test_ddp_apply_optim_in_backward_ignored_params``: each iteration the in-backward model must
equal pyc10d's DDP with a plain optimizer and torch's DDP with the same in-backward optimizers
(its accelerator stream calls stubbed out: CPU has none), with ``.grad`` None afterwards. Also:
parameters without in-backward optimizers sharing buckets with ones that have them still get
the averaged gradient, and torch's error when another communication hook is registered.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torch.nn.parallel import DistributedDataParallel as TorchDDP

import pyc10d as dist
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import error_of
from tests.nn.torch_reference import (
    assert_close_all,
    finish_both,
    init_both,
    stub_accelerator_sync,
)

TIMEOUT = 150
STEPS = 8
KWARGS = {"lr": 0.03}


def _models() -> list[nn.Module]:
    return [
        nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)),
        nn.Sequential(nn.Linear(3, 64), nn.Linear(64, 64), nn.Linear(64, 3)),
    ]


def _wrap(make, module: nn.Module, optim_cls, init_before: bool) -> nn.Module:
    """``make(module)`` with in-backward optimizers applied before or after wrapping."""
    if init_before:
        _apply_optimizer_in_backward(optim_cls, module.parameters(), KWARGS)
    wrapped = make(module)
    if not init_before:
        _apply_optimizer_in_backward(optim_cls, module.parameters(), KWARGS)
    return wrapped


def _parity(rank: int, optim_cls, init_before: bool, bucket_view: bool) -> None:
    torch.manual_seed(rank)  # different inputs (and initial weights: DDP broadcasts rank 0's)
    for model in _models():
        in_bwd, theirs = copy.deepcopy(model), copy.deepcopy(model)
        plain = DDP(model, gradient_as_bucket_view=bucket_view, bucket_cap_mb=0.0001)
        optim = optim_cls(plain.parameters(), **KWARGS)
        ours = _wrap(
            lambda m: DDP(m, gradient_as_bucket_view=bucket_view, bucket_cap_mb=0.0001),
            in_bwd,
            optim_cls,
            init_before,
        )
        torch_ddp = _wrap(
            lambda m: TorchDDP(m, gradient_as_bucket_view=bucket_view, bucket_cap_mb=0.0001),
            theirs,
            optim_cls,
            init_before,
        )
        for step in range(STEPS):
            inp = torch.randn(10, 3)  # mean loss (torch sums): SGD on the 64-wide net diverges
            plain(inp).mean().backward()
            optim.step()
            ours(inp).mean().backward()  # runs the optimizers too
            torch_ddp(inp).mean().backward()
            what = f"{optim_cls.__name__} before={init_before} view={bucket_view} step {step}"
            assert_close_all(in_bwd.parameters(), model.parameters(), f"{what} vs plain")
            assert_close_all(in_bwd.parameters(), theirs.parameters(), f"{what} vs torch")
            assert all(p.grad is None for p in in_bwd.parameters()), what
            optim.zero_grad(set_to_none=True)


class TwoLinLayerNet(nn.Module):
    """torch's TwoLinLayerNet: two bias-free layers, both outputs returned."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(10, 10, bias=False)
        self.b = nn.Linear(10, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x), self.b(x)


def _ignored_params(rank: int, world_size: int) -> None:
    """a.weight is ignored: its optimizer steps on the local gradient; b's on the average."""
    for init_before in (True, False):
        torch.manual_seed(rank)
        model = TwoLinLayerNet()
        theirs = copy.deepcopy(model)
        for m in (model, theirs):
            DDP._set_params_and_buffers_to_ignore_for_model(m, ["a.weight"])
        sgd = torch.optim.SGD
        net = _wrap(lambda m: DDP(m), model, sgd, init_before)
        torch_net = _wrap(lambda m: TorchDDP(m), theirs, sgd, init_before)
        inp = torch.randn(1, 10)
        for n in (net, torch_net):
            a, b = n(inp)
            (a.transpose(0, 1) @ b).sum().backward()
        assert_close_all(model.parameters(), theirs.parameters(), f"before={init_before}")
        models: list = [None] * world_size
        dist.all_gather_object(models, model)
        for other in models[1:]:
            assert not torch.equal(models[0].a.weight, other.a.weight)
            torch.testing.assert_close(models[0].b.weight, other.b.weight, rtol=0, atol=0)


def _mixed_buckets(rank: int) -> None:
    """Only the first layer steps in backward; the others keep the averaged gradient for a
    plain optimizer (torch leaves them the local gradient when .grad is not a bucket view)."""
    torch.manual_seed(rank)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    reference = copy.deepcopy(model)
    _apply_optimizer_in_backward(torch.optim.SGD, model[0].parameters(), KWARGS)
    ddp, plain = DDP(model), DDP(reference)
    inp = torch.randn(5, 3)
    ddp(inp).sum().backward()
    plain(inp).sum().backward()
    assert model[0].weight.grad is None and model[0].bias.grad is None
    assert_close_all(
        [p.grad for p in model[1].parameters()],
        [p.grad for p in reference[1].parameters()],
        "layer 1 grads",
    )
    with torch.no_grad():
        for p in reference[0].parameters():
            p.add_(p.grad, alpha=-KWARGS["lr"])
    assert_close_all(model[0].parameters(), reference[0].parameters(), "layer 0 stepped")


def _hook_conflict() -> tuple[str, str]:
    """Another communication hook: the first forward raises torch's "only once" error."""
    errors = []
    for make in (DDP, TorchDDP):
        module = nn.Linear(2, 2)
        _apply_optimizer_in_backward(torch.optim.SGD, module.parameters(), KWARGS)
        ddp = make(module)
        ddp.register_comm_hook(None, _noop_hook)
        errors.append(error_of(lambda d=ddp: d(torch.randn(1, 2))))
    return errors[0], errors[1]


def _noop_hook(state, bucket):
    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def optim_in_backward(ctx, cases: list[tuple[str, bool, bool]]) -> tuple[str, str] | None:
    init_both(ctx)
    import torch.distributed as tdist

    stub_accelerator_sync()
    for name, init_before, bucket_view in cases:
        _parity(ctx.rank, getattr(torch.optim, name), init_before, bucket_view)
    out = None
    if cases[0] == ("SGD", True, True):
        _ignored_params(ctx.rank, ctx.world_size)
        _mixed_buckets(ctx.rank)
        out = _hook_conflict()
    finish_both(tdist)
    return out


CASES = {
    "sgd": [("SGD", True, True), ("SGD", False, True), ("SGD", True, False), ("SGD", False, False)],
    "adam": [("Adam", True, True), ("Adam", False, True)],
}


@world_sizes(2, 3)
@pytest.mark.parametrize("optim", list(CASES))
def test_optim_in_backward(world_size, optim):
    for out in spawn(optim_in_backward, world_size, args=(CASES[optim],), timeout=TIMEOUT):
        if optim == "sgd":
            ours, theirs = out
            assert ours == theirs
            assert "can only be called once" in ours
