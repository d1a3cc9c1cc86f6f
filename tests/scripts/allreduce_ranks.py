"""A pyc10d script for launcher tests: one allreduce of rank + 1, printed by every rank."""

import torch

import pyc10d as dist

dist.init_process_group("gloo")
t = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(t)
print(f"rank {dist.get_rank()}/{dist.get_world_size()} sum {t.item()}", flush=True)
dist.destroy_process_group()
