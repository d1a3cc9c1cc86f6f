"""Plain torch DistributedDataParallel training on the "pyc10d" backend (no pyc10d import).

    torchrun --nproc-per-node 2 examples/torch_ddp.py
    pyc10d-run --nproc-per-node 2 examples/torch_ddp.py --steps 20
    torchrun --nproc-per-node 2 examples/torch_ddp.py --backend gloo   # the same, on Gloo

This is an ordinary torch script: ``torch.distributed`` and torch's own
``torch.nn.parallel.DistributedDataParallel``. The "pyc10d" backend is there because pyc10d
declares a ``torch.backends`` entry point that torch loads when it is imported. Rank, world size
and the store address come from the environment (``env://``), which both launchers set; run
without a launcher, it trains in one process. Each rank trains the same small MLP on its own
batches of a synthetic regression task (a fixed random linear map plus noise), and rank 0 prints
the loss averaged over ranks after every few steps and a last line ``final loss X.XXXX``.
"""

from __future__ import annotations

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

IN_FEATURES = 32
OUT_FEATURES = 4


def make_model(seed: int) -> nn.Module:
    """A small MLP, initialised identically on every rank (DDP also broadcasts rank 0's)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(IN_FEATURES, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, OUT_FEATURES),
    )


def make_batch(
    generator: torch.Generator, target_map: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One synthetic batch: random inputs, targets = inputs @ target_map + a little noise."""
    inputs = torch.randn(batch, IN_FEATURES, generator=generator)
    noise = 0.01 * torch.randn(batch, OUT_FEATURES, generator=generator)
    return inputs, inputs @ target_map + noise


def mean_over_ranks(value: torch.Tensor) -> float:
    """``value`` averaged over every rank (a collective: each rank must call it)."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


def train(args: argparse.Namespace) -> float:
    """Train for ``args.steps`` steps; return the last loss averaged over ranks."""
    rank = dist.get_rank()
    model = DistributedDataParallel(make_model(args.seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    # the task is the same on every rank; the batches differ per rank
    target_map = (
        torch.randn(IN_FEATURES, OUT_FEATURES, generator=torch.Generator().manual_seed(args.seed))
        / IN_FEATURES**0.5
    )
    generator = torch.Generator().manual_seed(args.seed + 1 + rank)
    loss = torch.zeros(())
    for step in range(1, args.steps + 1):
        inputs, targets = make_batch(generator, target_map, args.batch_size)
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
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32, help="samples per rank per step")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    join_group(args.backend)
    try:
        if dist.get_rank() == 0:
            print(
                f"DDP on backend {dist.get_backend()!r}, world size {dist.get_world_size()}",
                flush=True,
            )
        final = train(args)
        if dist.get_rank() == 0:
            print(f"final loss {final:.4f}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
