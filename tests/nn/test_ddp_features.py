"""DDP construction and bookkeeping: parameter checks, broadcasts, ignored / frozen parameters,
unused parameters (the error without detection; local vs global unused with it) and outputs
nested in dicts, namedtuples and dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch
from torch import nn

import pyc10d as dist
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import assert_same_across_ranks, batch, error_of, init, sgd_step

TIMEOUT = 90


# -- construction ---------------------------------------------------------------------------
class WithBuffer(nn.Module):
    """A linear layer and a buffer the forward bumps by ``rank + 1``."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank
        self.fc = nn.Linear(3, 2)
        self.register_buffer("seen", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add_(self.rank + 1)
        return self.fc(x)


class Chain(nn.Module):
    """``c(b(a(x)))``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))


def _mismatch_errors(rank: int) -> dict[str, str]:
    out = {}
    shape = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3 if rank == 0 else 2))
    out["shape"] = error_of(lambda: DDP(shape))
    count = nn.Sequential(*[nn.Linear(2, 2) for _ in range(2 + (rank == 1))])
    out["count"] = error_of(lambda: DDP(count))
    dtype = nn.Linear(2, 2).to(torch.float64 if rank == 1 else torch.float32)
    out["dtype"] = error_of(lambda: DDP(dtype))
    return out


def construction(ctx) -> dict[str, str]:
    init(ctx)
    rank = ctx.rank
    out = _mismatch_errors(rank)
    assert "device_ids" in error_of(lambda: DDP(nn.Linear(2, 2), device_ids=[0]), ValueError)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    assert "doesn't have any parameter that requires a gradient" in error_of(lambda: DDP(frozen))
    with pytest.warns(FutureWarning, match="check_reduction"):
        DDP(nn.Linear(2, 2), check_reduction=True)

    # parameters and buffers start as rank 0's; the buffer is re-broadcast before each forward
    torch.manual_seed(rank)
    model = WithBuffer(rank)
    model.seen.fill_(10 * rank)
    ddp = DDP(model)
    assert model.seen.item() == 0
    assert_same_across_ranks(list(model.parameters()))
    for _ in range(3):
        ddp(torch.randn(2, 3)).sum().backward()
    assert model.seen.item() == 3 + rank  # rank 0's 2, then this rank's bump
    no_bcast = WithBuffer(rank)
    no_bcast.seen.fill_(10 * rank)
    ddp = DDP(no_bcast, broadcast_buffers=False)
    for _ in range(3):
        ddp(torch.randn(2, 3)).sum().backward()
    assert no_bcast.seen.item() == 10 * rank + 3 * (rank + 1)

    # ignored parameters and buffers are neither broadcast nor reduced; frozen ones only broadcast
    torch.manual_seed(rank)
    model = Chain()
    model.c.requires_grad_(False)
    DDP._set_params_and_buffers_to_ignore_for_model(model, ["b.weight", "b.bias"])
    before = model.b.weight.detach().clone()
    ddp = DDP(model)
    assert torch.equal(model.b.weight, before)
    assert len(ddp.reducer._params) == 2  # a.weight, a.bias
    assert_same_across_ranks([model.a.weight, model.c.weight])
    ddp(torch.full((2, 3), float(rank + 1))).sum().backward()
    assert model.c.weight.grad is None
    assert_same_across_ranks([model.a.weight.grad])
    local = model.b.weight.grad.clone()
    gathered = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, local)
    assert not torch.equal(gathered[0], gathered[1])  # b was not averaged
    dist.destroy_process_group()
    return out


@world_sizes(2, 3)
def test_construction(world_size):
    results = spawn(construction, world_size, timeout=TIMEOUT)
    for rank, out in enumerate(results):
        assert "params[2] (1.weight)" in out["shape"], out["shape"]
        assert "appears not to match sizes of the same param in process 0" in out["shape"]
        assert out["shape"].startswith(f"[{rank}]: ")
        assert (rank == 1) == ("in this process" in out["shape"])
        assert "DDP expects same model across all ranks" in out["count"]
        assert "params[0] (weight)" in out["dtype"]
        assert "appears not to match dtype" in out["dtype"]


# -- unused parameters ------------------------------------------------------------------------
class Task(nn.Module):
    """``p + x``."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.p + x


class GlobalLocalUnused(nn.Module):
    """Rank 0 uses ``t0``, the others ``t1``; nobody uses ``task_unused``."""

    def __init__(self) -> None:
        super().__init__()
        self.t0, self.t1, self.task_unused = Task(), Task(), Task()

    def forward(self, x: torch.Tensor, rank: int) -> torch.Tensor:
        return self.t0(x) if rank == 0 else self.t1(x)


class Partly(nn.Module):
    """Two layers the forward uses and one it never does."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(3, 3)
        self.head = nn.Linear(3, 1)
        self.spare = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.used(x))


class Pair(NamedTuple):
    main: torch.Tensor
    aux: torch.Tensor


@dataclass
class Out:
    main: torch.Tensor
    aux: torch.Tensor


class TwoHeads(nn.Module):
    """Two heads; the loss uses only ``main``.

    A dict or namedtuple output carries ``aux`` too (DDP's sink gives it an undefined gradient);
    a dataclass output (opaque to the sink, as in torch) leaves ``aux`` out: it is unused.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Linear(3, 3)
        self.main = nn.Linear(3, 1)
        self.aux = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> object:
        h = torch.relu(self.body(x))
        main = self.main(h)
        if self.kind == "dict":
            return {"main": main, "extra": [self.aux(h), 3]}
        if self.kind == "namedtuple":
            return Pair(main, self.aux(h))
        return Out(main, torch.zeros(1))


def _main_of(out: object) -> torch.Tensor:
    return out["main"] if isinstance(out, dict) else out.main


def unused(ctx) -> dict[str, str]:
    init(ctx)
    rank = ctx.rank
    out = {}
    # without detection: the next iteration raises instead of hanging
    ddp = DDP(Partly())
    ddp(torch.randn(2, 3)).sum().backward()
    out["error"] = error_of(lambda: ddp(torch.randn(2, 3)))

    # with detection: locally unused parameters get the average, globally unused stay None
    for options in ({}, {"gradient_as_bucket_view": True}, {"static_graph": True}):
        ddp = DDP(GlobalLocalUnused(), find_unused_parameters=True, **options)
        for _ in range(2):
            ddp.zero_grad()
            ddp(torch.full((2, 2), 8.0), rank).mean().backward()
            m = ddp.module
            assert m.t0.p.grad is not None and m.t1.p.grad is not None, options
            assert m.task_unused.p.grad is None, options
            expected = torch.full((2, 2), 0.25 / ctx.world_size)
            torch.testing.assert_close(m.t0.p.grad, expected)
            torch.testing.assert_close(m.t1.p.grad, expected * (ctx.world_size - 1))

    # outputs nested in containers; an output left out of the loss
    for kind in ("dict", "namedtuple", "dataclass"):
        torch.manual_seed(0)
        model = TwoHeads(kind)
        ddp = DDP(model, find_unused_parameters=True)
        for step in range(3):
            ddp.zero_grad()
            x, _ = batch(step * 10 + rank, 4, 3, 1)
            _main_of(ddp(x)).sum().backward()
            assert model.aux.weight.grad is None, kind
            assert_same_across_ranks([model.body.weight.grad, model.main.weight.grad])
            sgd_step(ddp)
    dist.destroy_process_group()
    return out


@world_sizes(2, 3)
def test_unused_parameters(world_size):
    results = spawn(unused, world_size, timeout=TIMEOUT)
    for rank, out in enumerate(results):
        message = out["error"]
        assert message.startswith(
            "Expected to have finished reduction in the prior iteration before starting a new one."
        )
        assert "find_unused_parameters=True" in message
        assert f"Parameter indices which did not receive grad for rank {rank}: 4 5" in message
