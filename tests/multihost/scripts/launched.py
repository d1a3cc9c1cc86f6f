"""A worker of the multihost launcher check: one allreduce, then what it saw, on one line.

Prints ``RESULT rank=R world=W sum=S node=N host=HOSTNAME master=ADDR`` (``node`` is the
launcher's ``GROUP_RANK``; ``master`` the ``MASTER_ADDR`` it was given).
"""

from __future__ import annotations

import os
import socket

import torch

import pyc10d as dist

dist.init_process_group("gloo")
t = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(t)
print(
    f"RESULT rank={dist.get_rank()} world={dist.get_world_size()} sum={t.item():g} "
    f"node={os.environ.get('GROUP_RANK')} host={socket.gethostname()} "
    f"master={os.environ.get('MASTER_ADDR')}",
    flush=True,
)
dist.destroy_process_group()
