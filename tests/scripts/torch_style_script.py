"""A torch.distributed-style data-parallel script, untouched but for which module ``dist`` is.

``DIST_MODULE`` picks ``torch.distributed`` or ``pyc10d``; everything below the import is plain
torch.distributed code (env:// rendezvous, a model step with averaged gradients, collectives,
object collectives, a subgroup). The results go to the JSON file named on the command line.
"""

import importlib
import json
import os
import sys

import torch

dist = importlib.import_module(os.environ.get("DIST_MODULE", "torch.distributed"))


def main(out_path: str) -> None:
    dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {"rank": rank, "world": world, "backend_is_gloo": dist.get_backend() == "gloo"}

    torch.manual_seed(1234 + rank)  # different weights per rank until broadcast
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    for param in model.parameters():
        dist.broadcast(param.data, src=0)
    data = torch.randn(32, 8, generator=torch.Generator().manual_seed(rank))
    model(data).pow(2).mean().backward()
    for param in model.parameters():
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad /= world
    results["grads"] = [p.grad.flatten().tolist() for p in model.parameters()]

    gathered = [torch.zeros(3) for _ in range(world)]
    dist.all_gather(gathered, torch.arange(3.0) + 10 * rank)
    results["all_gather"] = [t.tolist() for t in gathered]

    peak = torch.tensor([float(rank * rank)])
    work = dist.all_reduce(peak, op=dist.ReduceOp.MAX, async_op=True)
    work.wait()
    results["max"] = peak.item()

    scattered = torch.zeros(2)
    chunks = [torch.full((2,), float(r)) for r in range(world)] if rank == 0 else None
    dist.scatter(scattered, chunks, src=0)
    results["scatter"] = scattered.tolist()

    out = torch.zeros(world)
    dist.all_to_all_single(out, torch.arange(world, dtype=torch.float32) + 100 * rank)
    results["all_to_all_single"] = out.tolist()

    objects = [None] * world
    dist.all_gather_object(objects, {"rank": rank, "name": f"worker-{rank}"})
    results["objects"] = objects

    if rank == 0:
        dist.send(torch.tensor([42.0]), dst=world - 1)
    elif rank == world - 1:
        received = torch.zeros(1)
        dist.recv(received, src=0)
        results["recv"] = received.item()

    evens = dist.new_group([r for r in range(world) if r % 2 == 0])
    if rank % 2 == 0:
        total = torch.tensor([float(rank)])
        dist.all_reduce(total, group=evens)
        results["evens_sum"] = total.item()
    dist.barrier()
    dist.destroy_process_group()
    with open(out_path, "w") as out_file:
        json.dump(results, out_file)


if __name__ == "__main__":
    main(sys.argv[1])
