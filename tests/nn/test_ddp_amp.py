"""Automatic mixed precision under pyc10d's DDP, against torch's DDP on a Gloo group.

torch's ``_test_DistributedDataParallel_with_amp`` on CPU: ``torch.autocast("cpu",
dtype=torch.bfloat16)`` around the forward and the loss, ``torch.amp.GradScaler("cpu")``
scaling the loss and stepping SGD, 20 iterations, with and without
``gradient_as_bucket_view`` (which must give the same model). Each rank trains on its slice of
the shuffled batch (torch's test feeds every rank the whole batch). torch's DDP trains next to
pyc10d's in the same processes; before each step it takes pyc10d's parameters (a last-bit
difference in fp32 can flip a bf16 rounding and grow over 20 steps), so each step's unscaled
gradients, stepped parameters and the scaler's scale are compared on their own (1e-5).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel as TorchDDP

from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.testing import spawn, world_sizes

from tests.nn.torch_reference import assert_close_all, copy_params, finish_both, init_both

TIMEOUT = 150
STEPS = 20


class _FC2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 50, bias=True)
        self.fc.bias.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Net(nn.Module):
    """torch's Net: three layers, a frozen bias and a frozen integer parameter; softmax out."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 10, bias=False)
        self.fc2 = _FC2()
        self.fc3 = nn.Linear(50, 4, bias=False)
        self.relu = nn.ReLU()
        self.no_grad_param = nn.Parameter(torch.tensor([2, 2]).long(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        x = self.fc3(x)
        return F.softmax(x, dim=1)


class Trainer:
    """A DDP module, its SGD and its GradScaler."""

    def __init__(self, ddp: nn.Module) -> None:
        self.ddp = ddp
        self.optimizer = torch.optim.SGD(ddp.parameters(), lr=0.03)
        self.scaler = torch.amp.GradScaler("cpu")
        self.dtypes: list[torch.dtype] = []
        ddp.module.fc3.register_forward_hook(lambda m, i, out: self.dtypes.append(out.dtype))

    def backward(self, inp: torch.Tensor, target: torch.Tensor) -> None:
        self.optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.mse_loss(self.ddp(inp), target)
        self.scaler.scale(loss).backward()
        for p in self.ddp.parameters():
            if p.requires_grad:
                assert p.grad is not None
                assert not p.grad.isnan().any() and not p.grad.isinf().any()

    def unscaled_grads(self) -> list[torch.Tensor | None]:
        scale = self.scaler.get_scale()
        return [None if p.grad is None else p.grad / scale for p in self.ddp.parameters()]

    def step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()


def _train(rank: int, world_size: int, bucket_view: bool) -> nn.Module:
    torch.manual_seed(31415)
    model = Net()
    ours = Trainer(DDP(copy.deepcopy(model), gradient_as_bucket_view=bucket_view))
    theirs = Trainer(TorchDDP(model, gradient_as_bucket_view=bucket_view))
    for p in ours.ddp.parameters():
        assert p.grad is None
    inp, target = torch.randn(world_size * 2, 2), torch.randn(world_size * 2, 4)
    mine = slice(2 * rank, 2 * rank + 2)
    for idx in range(STEPS):
        copy_params(theirs.ddp.module, ours.ddp.module)
        for trainer in (ours, theirs):
            trainer.backward(inp[mine], target[mine])
        what = f"view={bucket_view} step {idx}"
        assert_close_all(ours.unscaled_grads(), theirs.unscaled_grads(), f"{what} grads")
        for trainer in (ours, theirs):
            trainer.step()
        assert_close_all(ours.ddp.parameters(), theirs.ddp.parameters(), f"{what} params")
        assert ours.scaler.get_scale() == theirs.scaler.get_scale()
        torch.manual_seed(1337 + idx)
        inp = inp[torch.randperm(world_size * 2)]
    assert set(ours.dtypes) == {torch.bfloat16}  # autocast ran the layers in bf16
    return ours.ddp


def with_amp(ctx) -> None:
    tdist = init_both(ctx)
    not_view = _train(ctx.rank, ctx.world_size, bucket_view=False)
    view = _train(ctx.rank, ctx.world_size, bucket_view=True)
    assert_close_all(not_view.parameters(), view.parameters(), "grad is view vs not")
    finish_both(tdist)


@world_sizes(2, 3)
def test_with_amp(world_size):
    spawn(with_amp, world_size, timeout=TIMEOUT)
