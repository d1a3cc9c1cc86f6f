"""Device tensors are staged through host memory (simulated: float64 tensors play the device).

This machine has no GPU, so the tests mark float64 tensors as "not host" to drive the same path
a CUDA tensor takes: CPU copies go through the collective, results are copied back, and the
future holds the original tensors.
"""

from __future__ import annotations

import pytest
import torch

from pyc10d.process_group import staging
from pyc10d.testing import spawn, world_sizes

from tests.helpers.pg import make_pg, value_of


def _pretend_float64_is_a_device() -> None:
    staging.is_host = lambda tensor: tensor.dtype != torch.float64


def staged_collectives(ctx):
    _pretend_float64_is_a_device()
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    x = torch.full((3,), float(rank + 1), dtype=torch.float64)
    result = value_of(pg.allreduce([x]))
    assert result[0] is x  # the original tensor, not the host copy
    assert torch.equal(x, torch.full((3,), float(size * (size + 1) / 2), dtype=torch.float64))
    outputs = [torch.empty(2, dtype=torch.float64) for _ in range(size)]
    gathered = value_of(
        pg.allgather([outputs], [torch.full((2,), float(rank), dtype=torch.float64)])
    )
    assert all(a is b for a, b in zip(gathered, outputs, strict=True))
    assert [t[0].item() for t in outputs] == [float(r) for r in range(size)]
    b = torch.tensor([float(rank)], dtype=torch.float64)
    pg.broadcast(b, root=size - 1).wait()
    assert b.item() == size - 1
    mixed = [torch.tensor([1.0]), torch.tensor([2.0], dtype=torch.float64)]
    with pytest.raises(RuntimeError, match="invalid tensor type"):
        pg.allreduce(mixed)  # validation still runs, on the staged copies
    right, left = (rank + 1) % size, (rank - 1) % size
    send = pg.send([torch.tensor([rank * 10.0], dtype=torch.float64)], right, 1)
    got = torch.zeros(1, dtype=torch.float64)
    pg.recv([got], left, 1).wait()
    send.wait()
    assert got.item() == left * 10.0
    pg.shutdown()


@world_sizes(2, 3)
def test_device_tensors_are_staged_through_host(world_size):
    spawn(staged_collectives, world_size, timeout=90)


def test_host_tensors_are_not_copied():
    calls = []

    class Fake:
        @staging.staged_on_host
        def op(self, tensors):
            calls.append(tensors)
            return "work"

    t = torch.ones(2)
    assert Fake().op([t]) == "work"
    assert calls[0][0] is t
