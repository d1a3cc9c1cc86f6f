"""The functional collectives (``dist.all_reduce``, ``dist.broadcast``, ...) across processes.

Each rank function runs many checks, once synchronously and once with ``async_op=True``, to keep
the number of spawned runs small: the default group at world sizes 2 and 3, a subgroup that
leaves out rank 0 (global ``src``/``dst`` translated to group ranks, non-members warned).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as tdist

import pyc10d as dist
from pyc10d.testing import spawn, world_sizes

# every test here runs under both transports (auto and tcp): see tests/conftest.py
pytestmark = pytest.mark.both_transports

TIMEOUT = 90
NOT_MEMBER = "does not belong to the given group"


def _init(ctx) -> None:
    dist.init_process_group(
        backend="gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )


def _done(result, async_op: bool) -> None:
    """A Work when ``async_op`` (waited here), else None."""
    if async_op:
        assert isinstance(result, dist.Work), result
        result.wait()
    else:
        assert result is None, result


def _full(value, n: int = 2, dtype=torch.float32) -> torch.Tensor:
    return torch.full((n,), value, dtype=dtype)


# -- default group --------------------------------------------------------------------------
def _broadcast_reduce(rank: int, n: int, a: bool) -> None:
    t = _full(float(rank))
    _done(dist.broadcast(t, src=n - 1, async_op=a), a)
    assert t.tolist() == [n - 1.0] * 2
    t = _full(float(rank))
    _done(dist.broadcast(t, group_src=1, async_op=a), a)
    assert t.tolist() == [1.0] * 2
    c = torch.tensor([rank + 1j * rank], dtype=torch.complex64)
    _done(dist.broadcast(c, src=0, async_op=a), a)
    assert c.item() == 0j

    t = torch.tensor([rank + 1.0])
    _done(dist.all_reduce(t, async_op=a), a)
    assert t.item() == n * (n + 1) / 2
    t = torch.tensor([rank + 1.0])
    _done(dist.all_reduce(t, op=tdist.ReduceOp.MAX, async_op=a), a)  # torch's op
    assert t.item() == n
    t = torch.tensor([rank + 1.0])
    _done(dist.all_reduce(t, dist.ReduceOp(dist.ReduceOp.MIN), dist.group.WORLD, a), a)
    assert t.item() == 1.0
    c = torch.tensor([1 + 1j * rank], dtype=torch.complex64)
    _done(dist.all_reduce(c, op=dist.ReduceOp.SUM, async_op=a), a)
    assert c.item() == complex(n, n * (n - 1) / 2)
    with pytest.raises(ValueError, match=r"all_reduce does not support .*MAX on complex"):
        dist.all_reduce(c, op=dist.ReduceOp.MAX, async_op=a)

    t = torch.tensor([rank + 1.0])
    _done(dist.reduce(t, dst=n - 1, async_op=a), a)
    assert t.item() == (n * (n + 1) / 2 if rank == n - 1 else rank + 1.0)
    t = torch.tensor([rank + 1.0])
    _done(dist.reduce(t, op=tdist.ReduceOp.PRODUCT, async_op=a, group_dst=0), a)
    assert t.item() == (float(torch.arange(1, n + 1).prod()) if rank == 0 else rank + 1.0)


def _gathers(rank: int, n: int, a: bool) -> None:
    outs = [torch.zeros(2) for _ in range(n)]
    _done(dist.all_gather(outs, _full(float(rank)), async_op=a), a)
    assert [o.tolist() for o in outs] == [[float(r)] * 2 for r in range(n)]
    couts = [torch.zeros(1, dtype=torch.complex64) for _ in range(n)]
    _done(dist.all_gather(couts, torch.tensor([1j * rank]), async_op=a), a)
    assert [o.item() for o in couts] == [1j * r for r in range(n)]

    mine = torch.arange(2.0) + 10 * rank
    expected = torch.cat([torch.arange(2.0) + 10 * r for r in range(n)])
    concatenated, stacked = torch.zeros(2 * n), torch.zeros(n, 2)
    _done(dist.all_gather_single(concatenated, mine, async_op=a), a)
    _done(dist.all_gather_single(stacked, mine, async_op=a), a)
    assert torch.equal(concatenated, expected) and torch.equal(stacked.view(-1), expected)
    with pytest.warns(FutureWarning, match="all_gather_into_tensor` is deprecated"):
        _done(dist.all_gather_into_tensor(stacked.zero_(), mine, async_op=a), a)
    assert torch.equal(stacked.view(-1), expected)

    lists = [[torch.zeros(2), torch.zeros(1)] for _ in range(n)]
    with pytest.warns(FutureWarning, match="all_gather_coalesced` will be deprecated"):
        fut = dist.all_gather_coalesced(lists, [_full(float(rank)), _full(-rank, 1)], async_op=a)
    if a:  # torch returns the future here, not the Work
        assert isinstance(fut, torch.futures.Future)
        fut.wait()
    else:
        assert fut is None
    assert [[x.tolist() for x in pair] for pair in lists] == [
        [[float(r)] * 2, [-float(r)]] for r in range(n)
    ]
    pair = [_full(1.0), torch.tensor([[float(rank)]])]
    with pytest.warns(FutureWarning, match="all_reduce_coalesced` will be deprecated"):
        fut = dist.all_reduce_coalesced(pair, async_op=a)
    if a:
        assert isinstance(fut, torch.futures.Future)
        fut.wait()
    assert pair[0].tolist() == [float(n)] * 2 and pair[1].item() == n * (n - 1) / 2


def _gather_scatter(rank: int, n: int, a: bool) -> None:
    bucket = [torch.zeros(2) for _ in range(n)] if rank == 0 else None
    _done(dist.gather(_full(rank + 0.5), bucket, async_op=a), a)  # dst defaults to rank 0
    if rank == 0:
        assert [b.tolist() for b in bucket] == [[r + 0.5] * 2 for r in range(n)]
    bucket = [torch.zeros(2) for _ in range(n)] if rank == n - 1 else None
    _done(dist.gather(_full(float(rank)), bucket, dst=n - 1, async_op=a), a)
    if rank == n - 1:
        assert [b.tolist() for b in bucket] == [[float(r)] * 2 for r in range(n)]
    # a list only rank 1 gets wrong: torch's ValueError there, and the gather is refused on
    # every other rank (in that same collective), which then raise naming rank 1
    bucket = [torch.zeros(2) for _ in range(n)] if rank in (0, 1) else None
    wrong = "must NOT be specified on non-destination"
    _refused(rank, wrong, dist.gather, _full(0.0), bucket, 0, a)
    _refused(rank, "must be specified on destination rank", dist.gather, _full(0.0), None, 1, a)

    out = torch.zeros(2)
    chunks = [_full(10.0 + r) for r in range(n)] if rank == n - 1 else None
    _done(dist.scatter(out, chunks, src=n - 1, async_op=a), a)
    assert out.tolist() == [10.0 + rank] * 2
    cout = torch.zeros(1, dtype=torch.complex64)
    cchunks = [torch.tensor([1j * r], dtype=torch.complex64) for r in range(n)]
    _done(dist.scatter(cout, cchunks if rank == 0 else [], async_op=a), a)
    assert cout.item() == 1j * rank
    chunks = [out] * n if rank in (0, 1) else None
    _refused(rank, "must NOT be specified on non-source ranks", dist.scatter, out, chunks, 0, a)
    _refused(rank, "must be specified on source rank", dist.scatter, out, None, 1, a)


def _refused(rank: int, problem: str, call, tensor, tensors, root: int, a: bool) -> None:
    """``call(tensor, tensors, root)`` where only rank 1's list is wrong: ValueError on rank 1,
    the collective refused (DistBackendError quoting it) on every other rank."""
    if rank == 1:
        with pytest.raises(ValueError, match=problem):
            call(tensor, tensors, root, async_op=a)
        return
    with pytest.raises(dist.DistBackendError, match=f"rank 1 refused its part of .*{problem}"):
        _done(call(tensor, tensors, root, async_op=a), a)


def _reduce_scatters(rank: int, n: int, a: bool) -> None:
    out = torch.zeros(2)
    inputs = [_full(10.0 * rank + i) for i in range(n)]
    _done(dist.reduce_scatter(out, inputs, async_op=a), a)
    assert out.tolist() == [sum(10.0 * r + rank for r in range(n))] * 2
    _done(dist.reduce_scatter(out, inputs, op=tdist.ReduceOp.MAX, async_op=a), a)
    assert out.tolist() == [10.0 * (n - 1) + rank] * 2

    flat = torch.arange(2.0 * n) + rank  # rank r's chunk i: [2i + r, 2i + 1 + r]
    chunk = [sum(2.0 * rank + r for r in range(n)), sum(2.0 * rank + 1 + r for r in range(n))]
    _done(dist.reduce_scatter_single(out, flat, async_op=a), a)
    assert out.tolist() == chunk
    _done(dist.reduce_scatter_single(out, flat.view(n, 2), dist.ReduceOp.SUM, None, a), a)
    assert out.tolist() == chunk
    with pytest.warns(FutureWarning, match="reduce_scatter_tensor` is deprecated"):
        _done(dist.reduce_scatter_tensor(out, flat, op=dist.ReduceOp.AVG, async_op=a), a)
    assert out.tolist() == [c / n for c in chunk]


def _all_to_alls(rank: int, n: int, a: bool) -> None:
    outs = [torch.zeros(1) for _ in range(n)]
    _done(dist.all_to_all(outs, [torch.tensor([10.0 * rank + i]) for i in range(n)], async_op=a), a)
    assert [o.item() for o in outs] == [10.0 * r + rank for r in range(n)]

    out = torch.zeros(n)
    _done(
        dist.all_to_all_single(out, torch.arange(n, dtype=torch.float32) + 100 * rank, async_op=a),
        a,
    )
    assert out.tolist() == [100.0 * r + rank for r in range(n)]
    # uneven: rank r sends i + 1 rows (of 2) to rank i, so it receives rank + 1 rows per sender
    send = torch.cat([torch.full((i + 1, 2), 100.0 * rank + i) for i in range(n)])
    recv = torch.zeros((rank + 1) * n, 2)
    work = dist.all_to_all_single(recv, send, [rank + 1] * n, [i + 1 for i in range(n)], async_op=a)
    _done(work, a)
    expected = torch.cat([torch.full((rank + 1, 2), 100.0 * r + rank) for r in range(n)])
    assert torch.equal(recv, expected)


def _argument_errors(rank: int, n: int) -> None:
    t = torch.zeros(2)
    with pytest.raises(TypeError, match=r"Expected parameter `tensor` of type torch\.Tensor"):
        dist.all_reduce([t])
    with pytest.raises(TypeError, match="`tensor_list` of type List"):
        dist.all_gather((t,) * n, t)
    with pytest.raises(ValueError, match="different dtypes"):
        dist.all_gather([torch.zeros(2, dtype=torch.int64)] * n, t)
    with pytest.raises(ValueError, match="Must specify src"):
        dist.broadcast(t)
    with pytest.raises(ValueError, match="specify both src and group_src"):
        dist.broadcast(t, src=0, group_src=0)
    with pytest.raises(ValueError, match="specify both dst and group_dst"):
        dist.reduce(t, dst=0, group_dst=0)
    output_lists = pytest.raises(TypeError, match="Invalid function argument: output_tensor_lists")
    with output_lists, pytest.warns(FutureWarning):
        dist.all_gather_coalesced(({},), [t])
    assert dist.supports_complex(tdist.ReduceOp.SUM) and not dist.supports_complex(
        dist.ReduceOp.MIN
    )


def collectives_default_group(ctx) -> bool:
    _init(ctx)
    rank, n = dist.get_rank(), dist.get_world_size()
    _argument_errors(rank, n)
    for a in (False, True):
        _broadcast_reduce(rank, n, a)
        _gathers(rank, n, a)
        _gather_scatter(rank, n, a)
        _reduce_scatters(rank, n, a)
        _all_to_alls(rank, n, a)
        _done(dist.barrier(async_op=a), a)
    _done(dist.barrier(dist.group.WORLD, False, [0], timedelta(seconds=30)), False)
    dist.destroy_process_group()
    return True


@world_sizes(2, 3)
def test_collectives_on_the_default_group(world_size):
    assert spawn(collectives_default_group, world_size, timeout=TIMEOUT) == [True] * world_size


# -- a subgroup without rank 0 ----------------------------------------------------------------
def _non_member_calls(g) -> int:
    """Every collective on ``g`` from a rank outside it: a warning and None each time."""
    t, calls = (
        torch.zeros(2),
        [
            lambda a: dist.broadcast(t, src=1, group=g, async_op=a),
            lambda a: dist.broadcast(t, group_src=0, group=g, async_op=a),
            lambda a: dist.all_reduce(t, group=g, async_op=a),
            lambda a: dist.reduce(t, dst=2, group=g, async_op=a),
            lambda a: dist.all_gather([t, t], t, group=g, async_op=a),
            lambda a: dist.all_gather_single(torch.zeros(4), t, group=g, async_op=a),
            lambda a: dist.gather(t, None, dst=1, group=g, async_op=a),
            lambda a: dist.scatter(t, None, src=2, group=g, async_op=a),
            lambda a: dist.reduce_scatter(t, [t, t], group=g, async_op=a),
            lambda a: dist.reduce_scatter_single(t, torch.zeros(4), group=g, async_op=a),
            lambda a: dist.all_to_all([t, t], [t, t], group=g, async_op=a),
            lambda a: dist.all_to_all_single(t, t, group=g, async_op=a),
            lambda a: dist.barrier(group=g, async_op=a),
        ],
    )
    for a in (False, True):
        for call in calls:
            with pytest.warns(UserWarning, match=NOT_MEMBER):
                assert call(a) is None
    with pytest.warns(FutureWarning), pytest.warns(UserWarning, match=NOT_MEMBER):
        assert dist.all_reduce_coalesced([t], group=g, async_op=True) is None
    with pytest.warns(FutureWarning), pytest.warns(UserWarning, match=NOT_MEMBER):
        assert dist.all_gather_coalesced([[t], [t]], [t], group=g) is None
    return len(calls)


def _member_calls(g, rank: int) -> None:
    """Global ranks 1 and 2 are group ranks 0 and 1: ``src``/``dst`` are global ranks."""
    me = dist.get_rank(g)
    assert me == rank - 1
    for a in (False, True):
        t = _full(float(rank))
        _done(dist.broadcast(t, src=2, group=g, async_op=a), a)
        assert t.tolist() == [2.0, 2.0]
        _done(dist.broadcast(t.fill_(rank), group=g, async_op=a, group_src=0), a)
        assert t.tolist() == [1.0, 1.0]
        _done(dist.all_reduce(t.fill_(rank), group=g, async_op=a), a)
        assert t.tolist() == [3.0, 3.0]
        _done(dist.reduce(t.fill_(rank), dst=1, group=g, async_op=a), a)
        assert t.tolist() == ([3.0, 3.0] if rank == 1 else [2.0, 2.0])
        _done(dist.reduce(t.fill_(rank), group=g, async_op=a, group_dst=1), a)
        assert t.tolist() == ([3.0, 3.0] if rank == 2 else [1.0, 1.0])

        outs = [torch.zeros(2), torch.zeros(2)]
        _done(dist.all_gather(outs, _full(float(rank)), group=g, async_op=a), a)
        assert [o.tolist() for o in outs] == [[1.0, 1.0], [2.0, 2.0]]
        bucket = [torch.zeros(2), torch.zeros(2)] if rank == 2 else None
        _done(dist.gather(_full(float(rank)), bucket, dst=2, group=g, async_op=a), a)
        if rank == 2:
            assert [b.tolist() for b in bucket] == [[1.0, 1.0], [2.0, 2.0]]
        chunks = [_full(5.0), _full(6.0)] if rank == 1 else None
        _done(dist.scatter(t, chunks, group=g, async_op=a, group_src=0), a)
        assert t.tolist() == [4.0 + rank] * 2
        _done(dist.reduce_scatter(t, [_full(1.0), _full(2.0)], group=g, async_op=a), a)
        assert t.tolist() == [2.0 * rank] * 2
        out = torch.zeros(2)
        send = torch.tensor([10.0, 20.0]) + rank
        _done(dist.all_to_all_single(out, send, group=g, async_op=a), a)
        assert out.tolist() == [10.0 * me + 11, 10.0 * me + 12]
        _done(dist.barrier(group=g, async_op=a), a)
    # as in torch, gather and scatter default to global rank 0, which is not in this group
    with pytest.raises(ValueError, match="Global rank 0 is not part of group"):
        dist.gather(_full(0.0), None, group=g)
    with pytest.raises(ValueError, match="Global rank 0 is not part of group"):
        dist.broadcast(t, src=0, group=g)


def collectives_subgroup(ctx) -> int:
    _init(ctx)
    rank = dist.get_rank()
    g = dist.new_group([1, 2])
    calls = 0
    if rank == 0:
        assert g is dist.GroupMember.NON_GROUP_MEMBER
        calls = _non_member_calls(g)
    else:
        _member_calls(g, rank)
    t = torch.tensor([1.0])
    dist.all_reduce(t)  # the default group still works for everyone
    assert t.item() == 3.0
    dist.destroy_process_group()
    return calls


def test_collectives_on_a_subgroup_without_rank_0():
    results = spawn(collectives_subgroup, 3, timeout=TIMEOUT)
    assert results[0] == 13 and results[1:] == [0, 0]
