"""Run by ``pyc10d-run`` in tests/launcher/test_launcher.py: env://, all_reduce, record it."""

import json
import sys
from pathlib import Path

import torch

import pyc10d as dist


def main(out: Path) -> None:
    dist.init_process_group()  # env://, from the launcher's variables
    rank = dist.get_rank()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    (out / f"rank{rank}.json").write_text(
        json.dumps({"world": dist.get_world_size(), "sum": value.item()})
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
