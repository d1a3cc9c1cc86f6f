"""The adapter's fast paths: torch's single-tensor calls take pyc10d's own fast paths.

``dist.all_reduce``, ``broadcast``, ``all_gather_into_tensor``, ``reduce_scatter_tensor`` and
``all_to_all_single`` (and funcol's, which arrive from C++ as the coalesced forms with one pair
or with explicit even split sizes) run through ``ProcessGroup._*_fast`` without pyc10d's general
methods: the test replaces those methods with ones that fail, then checks every result against
values computed here. Calls the fast paths decline (a non-contiguous tensor, PREMUL_SUM, options
with a timeout of their own) take the general methods and give the same results. A synchronous
call from torch's own function gets None back (torch skips its wait then); any other caller, a
torch Work.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from pyc10d.testing import spawn, world_sizes
from pyc10d.torch_backend.work import TorchWork

TIMEOUT = 90
GENERAL = (
    "allreduce",
    "broadcast",
    "_allgather_base",
    "allgather_into_tensor_coalesced",
    "_reduce_scatter_base",
    "reduce_scatter_tensor_coalesced",
    "alltoall_base",
)
"""pyc10d's general group methods behind the adapter's fast paths."""


def _init(ctx) -> None:
    dist.init_process_group(
        "pyc10d", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )


def _data(rank: int, rows: int, cols: int = 3) -> torch.Tensor:
    return torch.arange(rows * cols, dtype=torch.float32).reshape(rows, cols) * (rank + 1) + rank


def _finish(work, async_op: bool) -> None:
    if async_op:
        assert isinstance(work, TorchWork), work
        work.wait()
    else:
        assert work is None, work


def _block_general(pg, calls: list[str]) -> None:
    """Make each general method of pyc10d's group ``pg`` record its name, then fail."""

    def make(name: str):
        def general(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"the general {name} ran")

        return general

    for name in GENERAL:
        setattr(pg, name, make(name))


def _count_general(pg, calls: list[str]) -> None:
    """Make each general method of ``pg`` record its name, then run as before."""
    for name in GENERAL:
        original = getattr(type(pg), name).__get__(pg)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(pg, name, counted)


def _expected(n: int, rank: int) -> dict[str, torch.Tensor]:
    inputs = [_data(r, 2 * n) for r in range(n)]
    total = sum(inputs)
    mine = slice(2 * rank, 2 * rank + 2)
    return {
        "sum": total,
        "avg": total / n,
        "max": torch.stack(inputs).amax(0),
        "broadcast": inputs[n - 1],
        "gather": torch.cat(inputs),
        "reduce_scatter": total[mine],
        "reduce_scatter_avg": total[mine] / n,
        "all_to_all": torch.cat([x[mine] for x in inputs]),
    }


def _module_calls(rank: int, n: int, a: bool) -> dict[str, torch.Tensor]:
    out = {}
    for key, op in (("sum", dist.ReduceOp.SUM), ("avg", dist.ReduceOp.AVG), ("max", "MAX")):
        t = _data(rank, 2 * n)
        _finish(
            dist.all_reduce(t, op=getattr(dist.ReduceOp, op) if op == "MAX" else op, async_op=a), a
        )
        out[key] = t
    t = _data(rank, 2 * n)
    _finish(dist.broadcast(t, src=n - 1, async_op=a), a)
    out["broadcast"] = t
    gathered = torch.empty(2 * n * n, 3)
    _finish(dist.all_gather_into_tensor(gathered, _data(rank, 2 * n), async_op=a), a)
    out["gather"] = gathered
    for key, op in (
        ("reduce_scatter", dist.ReduceOp.SUM),
        ("reduce_scatter_avg", dist.ReduceOp.AVG),
    ):
        t = torch.empty(2, 3)
        _finish(dist.reduce_scatter_tensor(t, _data(rank, 2 * n), op=op, async_op=a), a)
        out[key] = t
    t = torch.empty(2 * n, 3)
    _finish(dist.all_to_all_single(t, _data(rank, 2 * n), async_op=a), a)
    out["all_to_all"] = t
    t = torch.empty(2 * n, 3)
    even = [2] * n
    _finish(dist.all_to_all_single(t, _data(rank, 2 * n), even, even, async_op=a), a)
    out["all_to_all_even_splits"] = t
    return out


def _funcol_calls(rank: int, n: int) -> dict[str, torch.Tensor]:
    group = dist.group.WORLD
    x = _data(rank, 2 * n)
    return {
        "sum": funcol.wait_tensor(funcol.all_reduce(x, "sum", group)),
        "gather": funcol.wait_tensor(funcol.all_gather_tensor(x, 0, group)),
        "reduce_scatter": funcol.wait_tensor(funcol.reduce_scatter_tensor(x, "sum", 0, group)),
        "all_to_all": funcol.wait_tensor(funcol.all_to_all_single(x, None, None, group)),
    }


def _declined(rank: int, n: int) -> dict[str, torch.Tensor]:
    """Calls the fast paths decline: they run pyc10d's general methods."""
    out = {}
    t = _data(rank, 3, 2 * n).t()  # non-contiguous
    dist.all_reduce(t)
    out["non_contiguous"] = t
    t = _data(rank, 2 * n)
    dist.all_reduce(t, op=dist._make_nccl_premul_sum(2.0))
    out["premul_sum"] = t
    opts = dist.AllreduceOptions()
    opts.timeout = timedelta(seconds=60)  # its own timeout
    t = _data(rank, 2 * n)
    dist.group.WORLD.allreduce([t], opts).wait()
    out["own_timeout"] = t
    return out


def fast_paths(ctx) -> dict[str, object]:
    """Results of each call; the general methods fail while the fast ones must serve."""
    _init(ctx)
    rank, n = ctx.rank, ctx.world_size
    pg = dist.group.WORLD.pg
    calls: list[str] = []
    _block_general(pg, calls)
    results: dict[str, object] = {}
    for a in (False, True):
        results.update(
            {f"{k}{'_async' if a else ''}": v for k, v in _module_calls(rank, n, a).items()}
        )
    results.update({f"funcol_{k}": v for k, v in _funcol_calls(rank, n).items()})
    pending = dist.all_reduce(_data(rank, 2 * n), async_op=True)  # not waited yet
    t = _data(rank, 2 * n)
    dist.all_reduce(t)  # synchronous, behind a queued one: both run
    results["behind_pending"] = t
    assert pending.is_completed() or pending.wait()
    opts = dist.AllreduceOptions()
    opts.asyncOp = False
    direct = dist.group.WORLD.allreduce([torch.ones(1)], opts)  # not torch's function
    assert isinstance(direct, TorchWork) and direct.wait() and direct.result()[0].item() == n
    results["fast_blocked_general"] = list(calls)
    for name in GENERAL:
        delattr(pg, name)
    _count_general(pg, calls)
    results.update({f"declined_{k}": v for k, v in _declined(rank, n).items()})
    results["declined_general"] = list(calls)
    dist.destroy_process_group()
    return results


@world_sizes(2, 3)
def test_torch_calls_take_pyc10d_fast_paths(world_size):
    """Every single-tensor call (module API, sync and async, and funcol) is served by the fast
    paths with correct results; declined calls take the general methods, also correctly."""
    n = world_size
    for rank, got in enumerate(spawn(fast_paths, n, timeout=TIMEOUT)):
        assert got.pop("fast_blocked_general") == [], rank
        assert got.pop("declined_general") == ["allreduce"] * 3, rank
        want = _expected(n, rank)
        for key, value in got.items():
            if key.startswith("declined_"):
                continue
            base = key.removesuffix("_async").removeprefix("funcol_")
            base = {"all_to_all_even_splits": "all_to_all", "behind_pending": "sum"}.get(base, base)
            assert torch.equal(value, want[base]), (rank, key, value, want[base])
        total = sum(_data(r, 3, 2 * n) for r in range(n)).t()
        assert torch.equal(got["declined_non_contiguous"], total), rank
        assert torch.equal(got["declined_premul_sum"], want["sum"] * 2), rank
        assert torch.equal(got["declined_own_timeout"], want["sum"]), rank
