"""DDP on N ranks trains exactly like one process on the concatenated batch.

Each rank starts from a different random model (DDP must broadcast rank 0's), trains a copy with
DDP on its slice of every batch, and a plain copy of rank 0's model on the whole batch; after
3 SGD steps the parameters agree (fp32, rtol 1e-5). One spawn per world size runs every
configuration: plain, tiny buckets (many of them after the rebuild), find_unused_parameters (with
a layer the forward never uses), no_sync (2 micro-steps accumulated), static_graph and
gradient_as_bucket_view.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import pyc10d as dist
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import init, sgd_step

TIMEOUT = 90
LR = 0.1
STEPS = 3
BATCH = 3
TINY_BUCKETS = 0.0002  # MiB: about 200 bytes, so a few parameters per bucket

CONFIGS: dict[str, tuple[dict, bool, bool]] = {
    # name: (DDP kwargs, model has an unused layer, accumulate with no_sync)
    "plain": ({}, False, False),
    "tiny_buckets": ({"bucket_cap_mb": TINY_BUCKETS}, False, False),
    "find_unused": ({"find_unused_parameters": True, "bucket_cap_mb": TINY_BUCKETS}, True, False),
    "no_sync": ({"bucket_cap_mb": TINY_BUCKETS}, False, True),
    "static_graph": ({"static_graph": True, "bucket_cap_mb": TINY_BUCKETS}, True, False),
    "bucket_view": ({"gradient_as_bucket_view": True, "bucket_cap_mb": TINY_BUCKETS}, False, False),
    "bucket_view_no_sync": ({"gradient_as_bucket_view": True}, False, True),
}


class Net(nn.Module):
    """Three linear layers (and optionally one the forward never touches)."""

    def __init__(self, with_unused: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 6, bias=False)
        self.fc3 = nn.Linear(6, 3)
        self.unused = nn.Linear(3, 3) if with_unused else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _batch(step: int, micro: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + micro)
    return torch.randn(world_size * BATCH, 5, generator=g), torch.randn(
        world_size * BATCH, 3, generator=g
    )


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y)


def _train(rank: int, world_size: int, name: str) -> None:
    kwargs, with_unused, accumulate = CONFIGS[name]
    torch.manual_seed(rank)  # a different start on each rank
    model = Net(with_unused)
    ddp = DDP(model, **kwargs)
    reference = copy.deepcopy(model)  # rank 0's weights, after the broadcast
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    for step in range(STEPS):
        ddp.zero_grad()
        reference.zero_grad()
        micro_steps = 2 if accumulate else 1
        for micro in range(micro_steps):
            x, y = _batch(step, micro, world_size)
            if micro < micro_steps - 1:
                with ddp.no_sync():
                    _loss(ddp, x[mine], y[mine]).backward()
            else:
                _loss(ddp, x[mine], y[mine]).backward()
            _loss(reference, x, y).backward()
        if kwargs.get("gradient_as_bucket_view"):
            buffers = {b.buffer.untyped_storage().data_ptr() for b in ddp.reducer._buckets}
            for p in model.parameters():
                assert p.grad.untyped_storage().data_ptr() in buffers, name
        sgd_step(ddp, LR)
        sgd_step(reference, LR)
    for (pname, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{name}: {pname}")
        if pname.startswith("unused"):
            assert p.grad is None, f"{name}: an unused parameter got a gradient"
    if kwargs.get("bucket_cap_mb") == TINY_BUCKETS and not kwargs.get("find_unused_parameters"):
        assert ddp.reducer.bucket_count() > 1, name  # rebuilt into several buckets


def parity(ctx) -> list[str]:
    init(ctx)
    for name in CONFIGS:
        _train(ctx.rank, ctx.world_size, name)
    dist.destroy_process_group()
    return list(CONFIGS)


@world_sizes(2, 3)
def test_ddp_matches_single_process_training(world_size):
    assert spawn(parity, world_size, timeout=TIMEOUT) == [list(CONFIGS)] * world_size
