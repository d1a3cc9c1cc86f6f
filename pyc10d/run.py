"""``pyc10d-run`` / ``python -m pyc10d.run``: torchrun (``torch.distributed.run``) for pyc10d.

Start ``--nproc-per-node`` copies of a script (or ``-m`` module) with RANK, LOCAL_RANK,
WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, GROUP_RANK, ROLE_RANK and
TORCHELASTIC_RESTART_COUNT set, so that ``init_process_group()`` (``env://``) just works::

    pyc10d-run --nproc-per-node 4 train.py --lr 0.1
    pyc10d-run --nnodes 2 --node-rank 0 --master-addr node0 --master-port 29500 -m trainer
    pyc10d-run --nnodes 2 --rdzv-backend c10d --rdzv-endpoint node0:29400 train.py  # any node
    pyc10d-run --nproc-per-node 4 --log-dir logs --redirects 3 train.py  # per-rank log files

When a worker fails the others are stopped (SIGTERM, then SIGKILL) and a report names the rank,
its exit code or signal and the tail of its stderr. See ``pyc10d-run --help`` for every flag.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .launcher.cli import build_parser, parse_config
from .launcher.cli import main as _cli_main

__all__ = ["build_parser", "main", "parse_config"]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``pyc10d-run`` entry point: launch with ``argv`` (default ``sys.argv[1:]``)."""
    return _cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
