"""Train a small network on scikit-learn's bundled digits with pyc10d DDP on N processes.

    pyc10d-run --nproc-per-node 2 examples/train_digits.py --epochs 20

Run without a launcher it trains in a single process, the same model on the same data, so the
two accuracies can be compared. Rank 0 shows a tqdm progress bar, prints the loss and
validation accuracy of every epoch, and saves a checkpoint and a loss-curve PNG to --out-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

import pyc10d as dist
from pyc10d.data import DistributedSampler
from pyc10d.nn.parallel import DistributedDataParallel


def datasets(seed: int) -> tuple[TensorDataset, TensorDataset]:
    """The 1797 8x8 digits, scaled to [0, 1], split 80/20 the same way on every rank."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(x))
    train, val = order[:split], order[split:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def evaluate(model: nn.Module, val: TensorDataset, rank: int, world: int) -> float:
    """Accuracy over the whole validation set, each rank scoring its share."""
    x, y = val.tensors
    mine = torch.arange(rank, len(x), world)
    with torch.no_grad():
        correct = (model(x[mine]).argmax(dim=1) == y[mine]).sum().float()
    counts = torch.stack([correct, torch.tensor(float(len(mine)))])
    if world > 1:
        dist.all_reduce(counts)
    return (counts[0] / counts[1]).item()


def loss_figure(losses: list[float], accuracies: list[float]) -> Any:
    """A matplotlib figure of training loss and validation accuracy per (whole) epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, loss_axis = plt.subplots(figsize=(6, 4))
    epochs = range(1, len(losses) + 1)
    loss_axis.plot(epochs, losses, color="tab:blue", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 2.5
    loss_axis.set_ylabel("training loss", color="tab:blue")
    acc_axis = loss_axis.twinx()
    acc_axis.plot(epochs, accuracies, color="tab:orange", label="validation accuracy")
    acc_axis.set_ylabel("validation accuracy", color="tab:orange")
    acc_axis.set_ylim(0, 1)
    fig.suptitle("digits: pyc10d DistributedDataParallel")
    fig.tight_layout()
    return fig


def save_plot(losses: list[float], accuracies: list[float], path: Path) -> None:
    """Write :func:`loss_figure` to ``path`` as a PNG."""
    import matplotlib.pyplot as plt

    fig = loss_figure(losses, accuracies)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("runs/digits"))
    args = parser.parse_args()

    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group(backend="gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    train, val = datasets(args.seed)
    model = make_model(args.seed)
    if distributed:
        model = DistributedDataParallel(model)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, seed=args.seed)
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * world, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    if rank == 0:
        print(f"training on {world} process(es), {len(train)} samples, {args.epochs} epochs")
    losses, accuracies = [], []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        total = torch.zeros(2)
        batches = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=rank != 0)
        for x, y in batches:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += torch.tensor([loss.item() * len(x), len(x)])
        if distributed:
            dist.all_reduce(total)
        losses.append((total[0] / total[1]).item())
        model.eval()
        accuracies.append(evaluate(model, val, rank, world))
        if rank == 0:
            print(f"epoch {epoch + 1:3d}  loss {losses[-1]:.4f}  val accuracy {accuracies[-1]:.3f}")
    elapsed = time.perf_counter() - start
    if rank == 0:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        state = model.module.state_dict() if distributed else model.state_dict()
        torch.save(
            {"model": state, "optimizer": optimizer.state_dict(), "epoch": args.epochs},
            args.out_dir / "checkpoint.pt",
        )
        save_plot(losses, accuracies, args.out_dir / "loss.png")
        summary = {
            "world_size": world,
            "final_accuracy": accuracies[-1],
            "final_loss": losses[-1],
            "seconds": round(elapsed, 2),
        }
        (args.out_dir / "summary.json").write_text(json.dumps(summary))
        print(
            f"final validation accuracy {accuracies[-1]:.3f} after {elapsed:.1f} s; "
            f"checkpoint and loss.png in {args.out_dir}"
        )
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
