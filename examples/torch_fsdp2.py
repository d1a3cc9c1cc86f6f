"""Plain torch FSDP2 (``fully_shard``) training on the "pyc10d" backend (no pyc10d import).

    torchrun --nproc-per-node 2 examples/torch_fsdp2.py
    pyc10d-run --nproc-per-node 2 examples/torch_fsdp2.py --steps 20
    torchrun --nproc-per-node 2 examples/torch_fsdp2.py --backend gloo   # the same, on Gloo

An ordinary torch script: ``torch.distributed``, a CPU ``DeviceMesh`` and torch's own
``fully_shard``, which shards every parameter across the ranks (DTensors) and runs
all-gathers before each block's forward/backward and reduce-scatters of its gradients through
the group's backend. The "pyc10d" backend is registered by pyc10d's ``torch.backends`` entry
point when torch is imported. Rank, world size and the store address come from the environment
(``env://``); run without a launcher, it trains in one process. Rank 0 prints the loss averaged
over ranks every few steps, the shard sizes, and a last line ``final loss X.XXXX``.
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

IN_FEATURES = 32
HIDDEN = 128
OUT_FEATURES = 4


class Block(nn.Module):
    """Linear + ReLU with a residual connection: one FSDP unit."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + relu(linear(x))``."""
        return x + F.relu(self.linear(x))


def make_model(seed: int, blocks: int) -> nn.Sequential:
    """An MLP: input projection, ``blocks`` residual blocks, output head (same on every rank)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(IN_FEATURES, HIDDEN),
        *(Block(HIDDEN) for _ in range(blocks)),
        nn.Linear(HIDDEN, OUT_FEATURES),
    )


def shard(model: nn.Sequential, world_size: int) -> nn.Module:
    """``fully_shard`` each residual block, then the root (the projections)."""
    mesh = init_device_mesh("cpu", (world_size,))
    for layer in model:
        if isinstance(layer, Block):
            fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def mean_over_ranks(value: torch.Tensor) -> float:
    """``value`` averaged over every rank (a collective: each rank must call it)."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def train(args: argparse.Namespace) -> float:
    """Train for ``args.steps`` steps; return the last loss averaged over ranks."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = shard(make_model(args.seed, args.blocks), world_size)
    if rank == 0:
        local = sum(p.to_local().numel() for p in model.parameters())
        total = sum(p.numel() for p in model.parameters())
        print(f"{total} parameters, {local} on rank 0", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    target_map = (
        torch.randn(IN_FEATURES, OUT_FEATURES, generator=torch.Generator().manual_seed(args.seed))
        / IN_FEATURES**0.5
    )
    generator = torch.Generator().manual_seed(args.seed + 1 + rank)
    loss = torch.zeros(())
    for step in range(1, args.steps + 1):
        inputs = torch.randn(args.batch_size, IN_FEATURES, generator=generator)
        targets = inputs @ target_map
        optimizer.zero_grad()
        loss = F.mse_loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        if step % args.log_every == 0 and step != args.steps:
            mean = mean_over_ranks(loss)
            if rank == 0:
                print(f"step {step:4d}  loss {mean:.4f}", flush=True)
    return mean_over_ranks(loss)


def join_group(backend: str) -> None:
    """``init_process_group`` from the launcher's environment (env://); started without a
    launcher, a group of one process on a free local port."""
    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
    dist.init_process_group(backend)  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT


def main() -> None:
    """Parse the flags, join the group (env://), train, print the final loss on rank 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="pyc10d", help="torch.distributed backend")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--blocks", type=int, default=3, help="residual blocks (FSDP units)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per rank per step")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    join_group(args.backend)
    try:
        if dist.get_rank() == 0:
            print(
                f"FSDP2 on backend {dist.get_backend()!r}, world size {dist.get_world_size()}",
                flush=True,
            )
        final = train(args)
        if dist.get_rank() == 0:
            print(f"final loss {final:.4f}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
