"""DDP on less plain models: sparse embeddings, complex and mixed-dtype parameters,
``torch.utils.checkpoint`` inside the module (once, and twice with ``static_graph``), and
uneven inputs under ``join()``. Each trains like one process on the whole batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import pyc10d as dist
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import assert_same_across_ranks, error_of, init, sgd_step

TIMEOUT = 90
BATCH = 2


class Bag(nn.Module):
    """A sparse embedding, summed over tokens, and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 4, sparse=True)
        self.head = nn.Linear(4, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).sum(1))


class Complex(nn.Module):
    """A complex weight, then the magnitude through a real layer."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 3, dtype=torch.complex64))
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x.to(torch.complex64) @ self.w).abs())


class Mixed(nn.Module):
    """A float64 layer and a float32 layer (their gradients never share a bucket)."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Linear(4, 5).double()
        self.head = nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.wide(x.double())).float())


class Checkpointed(nn.Module):
    """A layer, a checkpointed block (run ``times`` times), a head."""

    def __init__(self, reentrant: bool, times: int = 1) -> None:
        super().__init__()
        self.reentrant, self.times = reentrant, times
        self.pre = nn.Linear(4, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(x)
        for _ in range(self.times):
            h = checkpoint(self.block, h, use_reentrant=self.reentrant)
        return self.head(h)


def _inputs(name: str, step: int, rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(step)
    if name == "sparse":
        return torch.randint(0, 10, (rows, 3), generator=g)
    return torch.randn(rows, 4, generator=g)


MODELS: dict[str, tuple[Callable[[], nn.Module], dict]] = {
    "sparse": (Bag, {}),
    "complex": (Complex, {"bucket_cap_mb": 0.00002}),
    "mixed": (Mixed, {"bucket_cap_mb": 0.00002}),
    "checkpoint": (lambda: Checkpointed(reentrant=False), {}),
    "checkpoint_reentrant": (lambda: Checkpointed(reentrant=True), {}),
    "checkpoint_twice_static": (lambda: Checkpointed(True, times=2), {"static_graph": True}),
}


def _parity(rank: int, world_size: int, name: str) -> None:
    make, kwargs = MODELS[name]
    torch.manual_seed(rank)
    model = make()
    ddp = DDP(model, **kwargs)
    reference = copy.deepcopy(model)
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    for step in range(3):
        x = _inputs(name, step, world_size * BATCH)
        y = torch.randn(world_size * BATCH, 1, generator=torch.Generator().manual_seed(step))
        for m, rows in ((ddp, mine), (reference, slice(None))):
            m.zero_grad()
            nn.functional.mse_loss(m(x[rows]), y[rows]).backward()
            sgd_step(m)
    for (pname, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{name}: {pname}")


def models(ctx) -> str:
    init(ctx)
    for name in MODELS:
        _parity(ctx.rank, ctx.world_size, name)
    twice = DDP(Checkpointed(reentrant=True, times=2))
    message = error_of(lambda: twice(torch.randn(2, 4)).sum().backward())
    dist.destroy_process_group()
    return message


@world_sizes(2, 3)
def test_models_match_single_process_training(world_size):
    for message in spawn(models, world_size, timeout=TIMEOUT):
        assert message.startswith("Expected to mark a variable ready only once.")
        assert "has been marked as ready twice" in message


# -- uneven inputs ------------------------------------------------------------------------------
def _join_batch(rank: int, i: int) -> torch.Tensor:
    return torch.randn(2, 3, generator=torch.Generator().manual_seed(100 * rank + i))


def uneven(ctx) -> list[str]:
    init(ctx)
    rank, world = ctx.rank, ctx.world_size
    batches = [1 + r for r in range(world)]  # rank r runs out after r + 1 iterations
    for divide_by_initial in (True, False):
        torch.manual_seed(0)
        model = nn.Linear(3, 1, bias=False)
        reference = copy.deepcopy(model)
        ddp = DDP(model)
        with ddp.join(divide_by_initial_world_size=divide_by_initial):
            for i in range(batches[rank]):
                ddp.zero_grad()
                ddp(_join_batch(rank, i)).sum().backward()
                sgd_step(ddp)
        for i in range(max(batches)):  # what the ranks still running average
            active = [r for r in range(world) if i < batches[r]]
            grad = sum(_join_batch(r, i).sum(0) for r in active)
            with torch.no_grad():
                reference.weight -= 0.1 * grad / (world if divide_by_initial else len(active))
        torch.testing.assert_close(model.weight, reference.weight, rtol=1e-5, atol=1e-6)
        assert_same_across_ranks([model.weight])
    # throw_on_early_termination: every rank raises once the first runs out
    ddp = DDP(nn.Linear(3, 1))
    messages = []
    try:
        with ddp.join(throw_on_early_termination=True):
            for i in range(batches[rank]):
                ddp(_join_batch(rank, i)).sum().backward()
    except RuntimeError as exc:
        messages.append(str(exc))
    dist.destroy_process_group()
    return messages


@world_sizes(2, 3)
def test_join_uneven_inputs(world_size):
    results = spawn(uneven, world_size, timeout=TIMEOUT)
    assert results[0] == ["Rank 0 exhausted all inputs."]
    for messages in results[1:]:
        assert messages == [
            "Detected at least one rank that exhausted inputs. Throwing across all ranks."
        ]
