"""torch's FSDP2, DTensor, functional collectives and ``torch.compile`` on ``"pyc10d"``.

One rank function per backend builds a CPU ``DeviceMesh`` over the default group and runs:
FSDP2 (``fully_shard``) training and checkpointing (DCP, full state dicts), DTensor placements
and sharded matmuls, each functional collective (counting the calls pyc10d's own group receives,
to prove nothing falls back), and a ``torch.compile(backend="aot_eager")`` function calling
``all_reduce``. It runs once on Gloo and once on pyc10d, and the tests below share those two
runs (``_stack.run_both``). DTensor and funcol data are small integers, so every result is exact
and also checked against values computed locally; checkpoints copy, so they are exact too.
FSDP2 parameters must equal Gloo's bit for bit at world size 2 (each reduced element is a single
commutative addition); at world size 3 the order of the three additions may differ (Gloo's ring
vs pyc10d's rank order), so the check allows float32 rounding, as does the comparison with the
single-process reference (one big matmul over the global batch sums in yet another order).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.distributed.checkpoint as dcp
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

from pyc10d.testing import world_sizes
from pyc10d.torch_backend.group import ProcessGroupPyc10d

from tests.torch_backend._stack import assert_tensors, guarded, ok, run_both

STEPS = 3
BATCH = 4
Results = dict[str, object]
FLOAT32 = {"rtol": 1e-5, "atol": 1e-6}


# -- FSDP2 --------------------------------------------------------------------------------------
def _net() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3)
    )


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 3, generator=g)


def _sharded(mesh, seed: int = 0) -> nn.Module:
    """``_net()`` (initialised from ``seed``), each Linear and the root under ``fully_shard``."""
    torch.manual_seed(seed)
    model = _net()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    return model


def _full(model: nn.Module) -> list[torch.Tensor]:
    return [p.full_tensor().detach().clone() for p in model.parameters()]


def _fsdp(rank: int, mesh, pg_alloc: bool = False) -> list[torch.Tensor]:
    """FSDP2 training (Adam); the full parameters after it. ``pg_alloc``: FSDP2 asks the group
    for its communication buffers (``set_allocate_memory_from_process_group_for_comm``)."""
    model = _sharded(mesh)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_allocate_memory_from_process_group_for_comm(pg_alloc)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(STEPS):
        x, y = _batch(rank, step)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return _full(model)


def reference_training(world_size: int) -> list[torch.Tensor]:
    """Single-process training on the global batch (all ranks' batches, concatenated)."""
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(STEPS):
        batches = [_batch(rank, step) for rank in range(world_size)]
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _dcp_round_trip(mesh, path: str, asynchronous: bool = False) -> list[torch.Tensor]:
    """Save a sharded model with DCP (``async_save`` if ``asynchronous``), load it into another:
    that one's full parameters after loading."""
    state = _sharded(mesh, seed=0).state_dict()
    if asynchronous:
        dcp.async_save(state, checkpoint_id=path).result()
    else:
        dcp.save(state, checkpoint_id=path)
    loaded = _sharded(mesh, seed=1)
    state = loaded.state_dict()
    dcp.load(state, checkpoint_id=path)
    loaded.load_state_dict(state)
    return _full(loaded)


def _full_state_dict(mesh) -> list[torch.Tensor]:
    """``get_model_state_dict(full_state_dict, cpu_offload)``: full tensors, on rank 0 only."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return list(get_model_state_dict(_sharded(mesh, seed=0), options=options).values())


def _broadcast_from_rank0(rank: int, mesh) -> list[torch.Tensor]:
    """Rank 0's full state dict loaded into a sharded model everywhere (``set_model_state_dict``
    with ``broadcast_from_rank0``): its full parameters after loading."""
    torch.manual_seed(0)
    full = _net().state_dict() if rank == 0 else {}
    target = _sharded(mesh, seed=2)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(target, full, options=options)
    return _full(target)


def _checkpoints(rank: int, mesh, tmpdir: str) -> Results:
    torch.manual_seed(0)
    return {
        "initial": [p.detach() for p in _net().parameters()],
        "dcp": guarded(_dcp_round_trip, mesh, os.path.join(tmpdir, "dcp")),
        "dcp_async_save": guarded(_dcp_round_trip, mesh, os.path.join(tmpdir, "async"), True),
        "full_state_dict": guarded(_full_state_dict, mesh),
        "broadcast_from_rank0": guarded(_broadcast_from_rank0, rank, mesh),
    }


# -- DTensor ------------------------------------------------------------------------------------
def _dtensor(rank: int, n: int, mesh) -> Results:
    """Placements and redistributions (each checked against local slicing/sums), matmuls."""
    out: Results = {}
    full = torch.arange(6 * n * 2 * n, dtype=torch.float32).reshape(6 * n, 2 * n) % 7 - 3
    rows = distribute_tensor(full, mesh, [Shard(0)])
    assert torch.equal(rows.to_local(), full.chunk(n, 0)[rank])
    out["shard_to_replicate"] = rows.redistribute(mesh, [Replicate()]).to_local()
    cols = distribute_tensor(full, mesh, [Replicate()]).redistribute(mesh, [Shard(1)])
    out["replicate_to_shard"] = cols.to_local()
    assert torch.equal(cols.to_local(), full.chunk(n, 1)[rank])
    out["shard_to_shard"] = rows.redistribute(mesh, [Shard(1)]).to_local()
    assert torch.equal(out["shard_to_shard"], cols.to_local())
    summands = torch.arange(4.0 * n).reshape(2 * n, 2)
    partial = DTensor.from_local(summands * (rank + 1), mesh, [Partial()])
    out["partial_to_replicate"] = partial.redistribute(mesh, [Replicate()]).to_local()
    expected = summands * sum(range(1, n + 1))
    assert torch.equal(out["partial_to_replicate"], expected)
    out["partial_to_shard"] = partial.redistribute(mesh, [Shard(0)]).to_local()  # reduce-scatter
    assert torch.equal(out["partial_to_shard"], expected.chunk(n)[rank])

    # sharded matmuls: row-sharded x replicated, and the contraction dim sharded (a Partial sum)
    b = torch.arange(2 * n * 5, dtype=torch.float32).reshape(2 * n, 5) % 5 - 2
    b_rep = distribute_tensor(b, mesh, [Replicate()])
    row_product = torch.matmul(rows, b_rep)
    assert row_product.placements == (Shard(0),)
    out["matmul_rowwise"] = row_product.full_tensor()
    inner = torch.matmul(cols, distribute_tensor(b, mesh, [Shard(0)]))
    assert inner.placements == (Partial(),)
    out["matmul_inner"] = inner.full_tensor()
    for key in ("matmul_rowwise", "matmul_inner"):
        assert torch.equal(out[key], full @ b), key
    assert torch.equal(out["shard_to_replicate"], full)
    return out


# -- functional collectives ---------------------------------------------------------------------
class _Counter:
    """Records each collective call pyc10d's own ProcessGroup (``ProcessGroupPyc10d.pg``)
    receives: instance attributes that shadow its methods."""

    METHODS = (
        "broadcast",
        "allreduce",
        "allreduce_coalesced",
        "allgather",
        "_allgather_base",
        "allgather_into_tensor_coalesced",
        "reduce_scatter",
        "_reduce_scatter_base",
        "reduce_scatter_tensor_coalesced",
        "alltoall_base",
        "alltoall",
        # the fast paths single-tensor calls take (see pyc10d.torch_backend.group)
        "_broadcast_fast",
        "_allreduce_fast",
        "_allgather_fast",
        "_reduce_scatter_fast",
        "_alltoall_fast",
    )

    def __init__(self, pg) -> None:
        self.calls: list[str] = []
        for name in self.METHODS:
            setattr(pg, name, self._wrap(name, getattr(pg, name)))

    def _wrap(self, name: str, method):
        def counted(*args, **kwargs):
            self.calls.append(name)
            return method(*args, **kwargs)

        return counted

    def take(self) -> list[str]:
        """The calls since the last ``take``."""
        calls, self.calls = self.calls, []
        return calls


_GATHER = {"_allgather_base", "allgather_into_tensor_coalesced", "_allgather_fast"}
REACHES = {
    "all_reduce": {"allreduce", "_allreduce_fast"},
    "all_reduce_coalesced": {"allreduce_coalesced", "allreduce", "_allreduce_fast"},
    "broadcast": {"broadcast", "_broadcast_fast"},
    "all_gather": _GATHER,
    "all_gather_dim1": _GATHER,
    "reduce_scatter": {
        "_reduce_scatter_base",
        "reduce_scatter_tensor_coalesced",
        "_reduce_scatter_fast",
    },
    "all_to_all": {"alltoall_base", "_alltoall_fast"},
}
"""The pyc10d ProcessGroup methods each functional collective may arrive at."""


def _deprecated(fn, new_name: str, *args) -> torch.Tensor:
    """Call a deprecated funcol name (it warns, pointing at ``new_name``) and wait."""
    with pytest.warns(FutureWarning, match=new_name):
        return funcol.wait_tensor(fn(*args))


def _funcol_ops(rank: int, n: int, group) -> dict[str, object]:
    """One call per functional collective, by name (run in order, on every rank)."""
    t = torch.arange(2.0 * n) + 10 * rank
    splits = [1 + (rank + peer) % 2 for peer in range(n)]  # uneven splits
    recv = [1 + (peer + rank) % 2 for peer in range(n)]
    return {
        "all_reduce": lambda: funcol.wait_tensor(funcol.all_reduce(t, "sum", group)),
        "all_reduce_coalesced": lambda: torch.stack(
            funcol.all_reduce_coalesced([t, -t], "max", group)
        ),
        "broadcast": lambda: funcol.broadcast(t, n - 1, group).wait(),
        "all_gather": lambda: _deprecated(
            funcol.all_gather_tensor, "all_gather_single", t, 0, group
        ),
        "all_gather_dim1": lambda: funcol.all_gather_single(t.reshape(2, n), 1, group) * 1,
        "reduce_scatter": lambda: _deprecated(
            funcol.reduce_scatter_tensor, "reduce_scatter_single", t, "sum", 0, group
        ),
        "all_to_all": lambda: funcol.all_to_all_single(
            torch.arange(float(sum(splits))) + 100 * rank, recv, splits, group
        ).wait(),
    }


def _funcol(rank: int, n: int, counter: _Counter | None) -> Results:
    """Each functional collective on the WORLD group: its result, and (on pyc10d) the calls
    pyc10d's group received for it, each advancing the group's sequence number by one."""
    group = dist.group.WORLD
    out: Results = {}
    calls: dict[str, list[str]] = {}
    if counter is not None:
        counter.take()  # forget earlier sections' calls
    for name, run in _funcol_ops(rank, n, group).items():
        seq = group._get_sequence_number_for_group() if counter else 0
        out[name] = run()
        if counter is not None:
            calls[name] = counter.take()
            assert group._get_sequence_number_for_group() == seq + 1, name
    base = torch.arange(2.0 * n)
    total = base * n + 10 * sum(range(n))
    assert torch.equal(out["all_reduce"], total)
    assert torch.equal(out["all_reduce_coalesced"], torch.stack([base + 10 * (n - 1), -base]))
    assert torch.equal(out["broadcast"], base + 10 * (n - 1))
    gathered = torch.cat([base + 10 * r for r in range(n)])
    assert torch.equal(out["all_gather"], gathered)
    assert torch.equal(out["all_gather_dim1"], torch.cat(gathered.reshape(n, 2, n).unbind(), 1))
    assert torch.equal(out["reduce_scatter"], total.chunk(n)[rank])
    parts = []  # from each peer p, the slice of its input it splits off for this rank
    for p in range(n):
        start = sum(1 + (p + q) % 2 for q in range(rank))
        parts.append(torch.arange(float(start), start + 1 + (p + rank) % 2) + 100 * p)
    assert torch.equal(out["all_to_all"], torch.cat(parts))
    out["calls"] = calls
    return out


def _compiled(rank: int, counter: _Counter | None) -> Results:
    """``torch.compile`` (``aot_eager``, counted) of a function with three all-reduces: funcol by
    group name and by ProcessGroup, and an in-place ``dist.all_reduce`` (which dynamo rewrites
    to funcol). One graph, holding the three collectives, and the eager result."""
    group = dist.group.WORLD

    def step(x: torch.Tensor) -> torch.Tensor:
        by_name = funcol.all_reduce(x * 2, "sum", group.group_name)
        by_group = funcol.all_reduce(x, "max", group)
        in_place = x + 1
        dist.all_reduce(in_place, group=group)
        return torch.stack([by_name + 1, by_group, in_place])

    backend = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    if counter is not None:
        counter.take()  # forget earlier sections' calls
    result = compiled(torch.arange(4.0) + rank)
    assert backend.frame_count == 1
    targets = [str(node.target) for node in backend.graphs[0].graph.nodes]
    assert sum("_c10d_functional.all_reduce" in t for t in targets) == 3, targets
    n = dist.get_world_size()
    base = torch.arange(4.0)
    expected = [base * 2 * n + n * (n - 1) + 1, base + n - 1, (base + 1) * n + n * (n - 1) / 2]
    assert torch.equal(result, torch.stack(expected))
    return {"result": result, "calls": counter.take() if counter else []}


def _with_calls(counter: _Counter | None, fn, *args) -> Results:
    """``fn(*args)``'s result, and the calls pyc10d's group received meanwhile."""
    if counter is not None:
        counter.take()  # forget earlier sections' calls
    return {"result": fn(*args), "calls": counter.take() if counter else []}


def torch_stack(ctx, backend: str) -> Results:
    """Run FSDP2, DTensor, funcol and compiled funcol on ``backend``; return every result and
    (on pyc10d) the calls pyc10d's own group received for each."""
    dist.init_process_group(
        backend, init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    rank, n = ctx.rank, ctx.world_size
    ours = isinstance(dist.group.WORLD, ProcessGroupPyc10d)
    assert ours == (backend == "pyc10d")
    counter = _Counter(dist.group.WORLD.pg) if ours else None
    mesh = init_device_mesh("cpu", (n,))
    assert mesh.get_group() is dist.group.WORLD
    out = {
        "fsdp": guarded(_with_calls, counter, _fsdp, rank, mesh),
        "fsdp_pg_alloc": guarded(_fsdp, rank, mesh, True),
        "checkpoint": _checkpoints(rank, mesh, ctx.tmpdir),
        "dtensor": guarded(_with_calls, counter, _dtensor, rank, n, mesh),
        "funcol": guarded(_funcol, rank, n, counter),
        "compiled": guarded(_compiled, rank, counter),
    }
    dist.destroy_process_group()
    return out


def _vs_gloo(world_size: int, key: str) -> list[tuple[Results, Results]]:
    """Each rank's (pyc10d, Gloo) results of section ``key``, checked not to have raised."""
    gloo, ours = run_both(torch_stack, world_size)
    return [
        (ok(o[key], f"pyc10d {key}"), ok(g[key], f"Gloo {key}"))
        for o, g in zip(ours, gloo, strict=True)
    ]


@world_sizes(2, 3)
def test_fsdp2_training_matches_gloo_and_reference(world_size):
    """FSDP2 training gives Gloo's parameters and the single-process reference's, its
    all-gathers and reduce-scatters reaching pyc10d."""
    reference = reference_training(world_size)
    exact = world_size == 2
    tolerance = {} if exact else FLOAT32
    for rank, (ours, gloo) in enumerate(_vs_gloo(world_size, "fsdp")):
        what = f"rank {rank} FSDP2"
        assert_tensors(ours["result"], gloo["result"], f"{what} vs Gloo", exact, **tolerance)
        assert_tensors(ours["result"], reference, f"{what} vs reference", False, **FLOAT32)
        calls = set(ours["calls"])
        assert calls & REACHES["all_gather"] and calls & REACHES["reduce_scatter"], calls


@world_sizes(2, 3)
def test_fsdp2_buffers_from_process_group_match_gloo(world_size):
    """FSDP2 asking the group for its communication buffers trains as on Gloo (Gloo's backend
    allocates none, and FSDP2 falls back to ``torch.empty``)."""
    exact = world_size == 2
    tolerance = {} if exact else FLOAT32
    for rank, (ours, gloo) in enumerate(_vs_gloo(world_size, "fsdp_pg_alloc")):
        assert_tensors(ours, gloo, f"rank {rank} FSDP2 (group buffers)", exact, **tolerance)


@world_sizes(2, 3)
def test_fsdp2_checkpointing_matches_gloo(world_size):
    """DCP save (and ``async_save``) then load, a full state dict, and loading rank 0's state dict
    into every rank (``broadcast_from_rank0``) give the saved parameters exactly, as on Gloo."""
    failures = []
    for rank, (ours, gloo) in enumerate(_vs_gloo(world_size, "checkpoint")):
        initial = ours["initial"]
        expected = {
            "dcp": initial,
            "dcp_async_save": initial,
            "broadcast_from_rank0": initial,
            "full_state_dict": initial if rank == 0 else [],
        }
        for key, want in expected.items():
            assert_tensors(gloo[key], want, f"rank {rank} {key} on Gloo")
            try:
                assert_tensors(ours[key], want, f"rank {rank} {key}")
            except AssertionError as exc:
                failures.append(str(exc))
    assert not failures, "\n\n".join(failures)


@world_sizes(2, 3)
def test_dtensor_matches_gloo(world_size):
    """DTensor distribute/redistribute (Shard, Replicate, Partial) and sharded matmuls give
    Gloo's results (and the local ones), through pyc10d's group."""
    for rank, (ours, gloo) in enumerate(_vs_gloo(world_size, "dtensor")):
        assert ours["result"].keys() == gloo["result"].keys()
        for key, value in gloo["result"].items():
            assert_tensors(ours["result"][key], value, f"rank {rank} {key}")
        # redistributions gather, reduce and reduce-scatter (funcol underneath)
        calls = set(ours["calls"])
        assert calls & REACHES["all_gather"] and calls & REACHES["reduce_scatter"], calls
        assert calls & REACHES["all_reduce"], calls


@world_sizes(2, 3)
def test_functional_collectives_reach_pyc10d_and_match_gloo(world_size):
    """Each funcol op gives Gloo's result and is exactly one call into pyc10d's own group."""
    for rank, (ours, gloo) in enumerate(_vs_gloo(world_size, "funcol")):
        calls = ours.pop("calls")
        assert gloo.pop("calls") == {}
        assert calls.keys() == ours.keys() == gloo.keys()
        for name, value in gloo.items():
            assert_tensors(ours[name], value, f"rank {rank} {name}")
            assert len(calls[name]) == 1 and calls[name][0] in REACHES[name], (name, calls)


@world_sizes(2, 3)
def test_compiled_functional_collectives_match_gloo(world_size):
    """A ``torch.compile(backend="aot_eager")`` function with funcol and in-place all-reduces
    compiles to one graph and gives Gloo's result, each all-reduce reaching pyc10d."""
    for rank, (ours, gloo) in enumerate(_vs_gloo(world_size, "compiled")):
        assert_tensors(ours["result"], gloo["result"], f"rank {rank} compiled")
        assert ours["calls"] == ["_allreduce_fast"] * 3, ours["calls"]
