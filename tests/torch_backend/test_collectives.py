"""Every collective and p2p op torch.distributed can send a backend, on ``"pyc10d"`` vs ``"gloo"``.

One rank function runs each op through ``torch.distributed`` (sync and ``async_op=True``) and
returns every result; the same function runs once on Gloo and once on pyc10d, each in its own
processes, and the results must be equal. Ops Gloo lacks on CPU are checked against values
computed here. Then the pyc10d-only behaviour: Work API, sequence numbers, errors and timeouts
as torch's types, a dead peer named, DETAIL mismatch detection, shutdown/abort and re-init.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from pyc10d.testing import spawn, world_sizes

TIMEOUT = 120
Results = dict[str, object]


def _init(ctx, backend: str, **kwargs) -> None:
    dist.init_process_group(
        backend, init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size, **kwargs
    )


def _data(rank: int, n: int = 6, dtype=torch.float32) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) * (rank + 1) + rank).to(dtype)


def _finish(work, async_op: bool) -> None:
    if async_op:
        assert isinstance(work, dist.Work), work
        work.wait()
    else:
        assert work is None


def _reductions(rank: int, n: int, a: bool, out: Results) -> None:
    for op in ("SUM", "PRODUCT", "MIN", "MAX"):
        t = _data(rank)
        _finish(dist.all_reduce(t, op=getattr(dist.ReduceOp, op), async_op=a), a)
        out[f"all_reduce_{op}"] = t
    for op in ("BAND", "BOR", "BXOR"):
        t = _data(rank, dtype=torch.int64)
        _finish(dist.all_reduce(t, op=getattr(dist.ReduceOp, op), async_op=a), a)
        out[f"all_reduce_{op}"] = t
    t = _data(rank, dtype=torch.float64).reshape(2, 3).t()  # non-contiguous
    _finish(dist.all_reduce(t, async_op=a), a)
    out["all_reduce_noncontiguous"] = t
    t = _data(rank)
    _finish(dist.reduce(t, dst=n - 1, op=dist.ReduceOp.MAX, async_op=a), a)
    out["reduce"] = t if rank == n - 1 else None  # elsewhere undefined (Gloo uses it as scratch)
    t = _data(rank)
    _finish(dist.broadcast(t, src=n - 1, async_op=a), a)
    out["broadcast"] = t
    sparse = torch.sparse_coo_tensor([[rank, n]], [1.0 + rank, 2.0], (n + 1,))
    _finish(dist.all_reduce(sparse, async_op=a), a)
    out["all_reduce_sparse"] = sparse.to_dense()


def _gathers(rank: int, n: int, a: bool, out: Results) -> None:
    outputs = [torch.empty(6) for _ in range(n)]
    _finish(dist.all_gather(outputs, _data(rank), async_op=a), a)
    out["all_gather"] = torch.stack(outputs)
    flat = torch.empty(6 * n)
    _finish(dist.all_gather_into_tensor(flat, _data(rank), async_op=a), a)
    out["all_gather_into_tensor"] = flat
    gathered = [torch.empty(6) for _ in range(n)] if rank == 0 else None
    _finish(dist.gather(_data(rank), gathered, dst=0, async_op=a), a)
    out["gather"] = torch.stack(gathered) if gathered else None
    received = torch.empty(6)
    pieces = [_data(r) * 10 for r in range(n)] if rank == n - 1 else None
    _finish(dist.scatter(received, pieces, src=n - 1, async_op=a), a)
    out["scatter"] = received


def _reduce_scatters_and_all_to_all(rank: int, n: int, a: bool, out: Results) -> None:
    result = torch.empty(6)
    inputs = [_data(rank) + 100 * r for r in range(n)]
    _finish(dist.reduce_scatter(result, inputs, async_op=a), a)
    out["reduce_scatter"] = result
    result = torch.empty(6)
    _finish(dist.reduce_scatter_tensor(result, torch.cat(inputs), async_op=a), a)
    out["reduce_scatter_tensor"] = result
    sends = [torch.full((2,), float(10 * rank + r)) for r in range(n)]
    recvs = [torch.empty(2) for _ in range(n)]
    _finish(dist.all_to_all(recvs, sends, async_op=a), a)
    out["all_to_all"] = torch.cat(recvs)
    sends = [torch.full((r + 1,), float(10 * rank + r)) for r in range(n)]
    in_splits = [r + 1 for r in range(n)]
    out_splits = [rank + 1] * n
    single = torch.empty(sum(out_splits))
    _finish(dist.all_to_all_single(single, torch.cat(sends), out_splits, in_splits, async_op=a), a)
    out["all_to_all_single"] = single
    _finish(dist.barrier(async_op=a), a)


def _point_to_point(rank: int, n: int, out: Results) -> None:
    nxt, prev = (rank + 1) % n, (rank - 1) % n
    t = torch.empty(6)
    if rank % 2 == 0:
        dist.send(_data(rank), dst=nxt)
        dist.recv(t, src=prev)
    else:
        dist.recv(t, src=prev)
        dist.send(_data(rank), dst=nxt)
    out["send_recv"] = t
    t = torch.empty(6)
    works = [dist.isend(_data(rank) * 2, dst=nxt, tag=7), dist.irecv(t, src=prev, tag=7)]
    for work in works:
        work.wait()
    out["isend_irecv"] = t
    t = torch.empty(6)
    ops = [dist.P2POp(dist.isend, _data(rank) * 3, nxt), dist.P2POp(dist.irecv, t, prev)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    out["batch_isend_irecv"] = t
    if rank == 0:
        sources = set()
        for _ in range(n - 1):
            any_t = torch.empty(1)
            sender = dist.recv(any_t, tag=3)
            assert any_t.item() == 100.0 + sender, (sender, any_t)
            sources.add(sender)
        out["recv_anysource"] = sorted(sources)
    else:
        dist.send(torch.tensor([100.0 + rank]), dst=0, tag=3)


def _objects_and_coalescing(rank: int, n: int, out: Results) -> None:
    objs = [None] * n
    dist.all_gather_object(objs, {"rank": rank, "s": "x" * rank})
    out["all_gather_object"] = objs
    lst = [rank, "a"] if rank == 1 else [None, None]
    dist.broadcast_object_list(lst, src=1)
    out["broadcast_object_list"] = lst
    got = [None]
    dist.scatter_object_list(got, [f"o{r}" for r in range(n)] if rank == 0 else None, src=0)
    out["scatter_object_list"] = got
    tensors = [_data(rank), _data(rank, 3)]
    with dist._coalescing_manager():
        for t in tensors:
            dist.all_reduce(t)
    out["coalesced_all_reduce"] = torch.cat(tensors)
    gathered = [torch.empty(6 * n), torch.empty(3 * n)]
    scattered = [torch.empty(2), torch.empty(1)]
    with dist._coalescing_manager(async_ops=True) as cm:
        dist.all_gather_into_tensor(gathered[0], _data(rank))
        dist.all_gather_into_tensor(gathered[1], _data(rank, 3))
    cm.wait()
    with dist._coalescing_manager():
        dist.reduce_scatter_tensor(scattered[0], _data(rank, 2 * n))
        dist.reduce_scatter_tensor(scattered[1], _data(rank, n))
    out["coalesced_all_gather_into_tensor"] = torch.cat(gathered)
    out["coalesced_reduce_scatter_tensor"] = torch.cat(scattered)
    sub = dist.new_group(list(range(1, n)), backend=dist.get_backend())
    t = _data(rank)
    if rank != 0:
        dist.all_reduce(t, group=sub)
    out["subgroup_all_reduce"] = t


def every_op(ctx, backend: str) -> Results:
    """Run each op on ``backend``; return every result, keyed by op."""
    _init(ctx, backend)
    rank, n = ctx.rank, ctx.world_size
    out: Results = {}
    for a in (False, True):
        part: Results = {}
        _reductions(rank, n, a, part)
        _gathers(rank, n, a, part)
        _reduce_scatters_and_all_to_all(rank, n, a, part)
        out.update({f"{k}{'_async' if a else ''}": v for k, v in part.items()})
    _point_to_point(rank, n, out)
    _objects_and_coalescing(rank, n, out)
    assert dist.get_backend() == backend
    dist.destroy_process_group()
    return out


def _assert_same(ours: Results, gloo: Results, rank: int) -> None:
    assert ours.keys() == gloo.keys()
    for key, value in gloo.items():
        mine = ours[key]
        if isinstance(value, torch.Tensor):
            assert mine.dtype == value.dtype and torch.equal(mine, value), (rank, key, mine, value)
        else:
            assert mine == value, (rank, key, mine, value)


@world_sizes(2, 3)
def test_every_op_matches_gloo(world_size):
    """Each op's result on pyc10d equals Gloo's, on every rank."""
    gloo = spawn(every_op, world_size, args=("gloo",), timeout=TIMEOUT)
    ours = spawn(every_op, world_size, args=("pyc10d",), timeout=TIMEOUT)
    for rank in range(world_size):
        _assert_same(ours[rank], gloo[rank], rank)
