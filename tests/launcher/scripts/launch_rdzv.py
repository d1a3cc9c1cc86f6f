"""Run by ``pyc10d-run`` in tests/launcher/test_rdzv.py: env://, all_reduce, record and print it.

Writes ``rank<R>.json`` into the directory given as the first argument: the launcher variables
it got and the all_reduce sum of ``rank + 1`` over the job.
"""

import json
import os
import sys
from pathlib import Path

import torch

import pyc10d as dist

VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
)


def main(out: Path) -> None:
    dist.init_process_group()  # env://, from the launcher's variables
    rank = dist.get_rank()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    record = {"env": {name: os.environ.get(name) for name in VARIABLES}, "sum": value.item()}
    (out / f"rank{rank}.json").write_text(json.dumps(record))
    # one write(2) of a whole line: workers of one node share the launcher's stdout, and a
    # line written in pieces can interleave with another worker's
    os.write(1, f"rank {rank} of {dist.get_world_size()}: sum {value.item():g}\n".encode())
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
