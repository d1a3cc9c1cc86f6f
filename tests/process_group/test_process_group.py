"""ProcessGroup collectives across processes: a port of torch's ProcessGroupGlooTest (CPU parts).

Every body runs on each rank; assertions inside ranks fail the test with that rank's traceback.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch

import pyc10d
from pyc10d import ReduceOp
from pyc10d.process_group import options as o
from pyc10d.testing import spawn, world_sizes

from tests.helpers.pg import make_pg, value_of

# every test here runs under both transports (auto and tcp): see tests/conftest.py
pytestmark = pytest.mark.both_transports

TIMEOUT = 90


# -- broadcast -------------------------------------------------------------------------------
def broadcast_basics(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    for root in range(size):
        opts = o.BroadcastOptions()
        opts.rootRank, opts.rootTensor = root, 0
        assert torch.equal(
            value_of(pg.broadcast([torch.tensor([rank])], opts))[0], torch.tensor([root])
        )
        for root_tensor in range(2):
            xs = [torch.tensor([rank * 2 + 0.0]), torch.tensor([rank * 2 + 1.0])]
            opts = o.BroadcastOptions()
            opts.rootRank, opts.rootTensor = root, root_tensor
            out = value_of(pg.broadcast(xs, opts))
            expected = torch.tensor([root * 2 + root_tensor], dtype=torch.float32)
            assert torch.equal(out[0], expected) and torch.equal(out[1], expected)
            assert torch.equal(xs[0], expected) and torch.equal(xs[1], expected)
        x = torch.tensor([complex(rank, rank)], dtype=torch.cfloat)
        opts = o.BroadcastOptions()
        opts.rootRank = root
        assert torch.equal(
            value_of(pg.broadcast([x], opts))[0],
            torch.tensor([complex(root, root)], dtype=torch.cfloat),
        )
    assert torch.equal(
        value_of(pg.broadcast(torch.tensor([rank + 1.0]), root=0))[0], torch.tensor([1.0])
    )
    big = torch.arange(300_000, dtype=torch.float64) * (rank + 1)
    pg.broadcast([big], _root_opts(o.BroadcastOptions, size - 1)).wait()
    assert torch.equal(big, torch.arange(300_000, dtype=torch.float64) * size)
    pg.shutdown()


def _root_opts(cls, root):
    opts = cls()
    opts.rootRank = root
    return opts


@world_sizes(2, 3)
def test_broadcast_basics(world_size):
    spawn(broadcast_basics, world_size, timeout=TIMEOUT)


def broadcast_stress(ctx):
    pg, rank, size = make_pg(ctx, threads=8), ctx.rank, ctx.world_size
    inputs = [torch.tensor([i * size + rank]) for i in range(1000)]
    works = [pg.broadcast(inputs[i], root=i % size) for i in range(len(inputs))]
    for i, work in enumerate(works):
        work.wait()
        assert torch.equal(inputs[i], torch.tensor([i * size + i % size])), i
    pg.shutdown()


@world_sizes(2, 3)
def test_broadcast_stress(world_size):
    spawn(broadcast_stress, world_size, timeout=TIMEOUT)


# -- allreduce -------------------------------------------------------------------------------
def _reduce_cases(rank, size):
    """(op, this rank's input, expected result) like torch's simple_reduce_tests."""
    ranks = range(1, size + 1)
    cases = [
        (ReduceOp.SUM, torch.tensor([rank + 1.0]), torch.tensor([float(sum(ranks))])),
        (
            ReduceOp.PRODUCT,
            torch.tensor([rank + 1.0]),
            torch.tensor([float(torch.tensor(list(ranks)).prod())]),
        ),
        (ReduceOp.MIN, torch.tensor([rank + 1.0]), torch.tensor([1.0])),
        (ReduceOp.MAX, torch.tensor([rank + 1.0]), torch.tensor([float(size)])),
        (ReduceOp.AVG, torch.tensor([rank + 1.0]), torch.tensor([sum(ranks) / size])),
    ]
    value = 1 << rank  # BAND/BOR/BXOR over one-hot bits plus one bit every rank sets
    cases += [
        (ReduceOp.BAND, torch.tensor([value | 1 << size]), torch.tensor([1 << size])),
        (ReduceOp.BOR, torch.tensor([value]), torch.tensor([(1 << size) - 1])),
        (
            ReduceOp.BXOR,
            torch.tensor([value | 1 << size]),
            torch.tensor([(1 << size) - 1 | ((size % 2) << size)]),
        ),
        (
            ReduceOp.SUM,
            torch.tensor([complex(rank + 1, rank)], dtype=torch.cfloat),
            torch.tensor([complex(sum(ranks), sum(range(size)))], dtype=torch.cfloat),
        ),
        (ReduceOp.SUM, torch.tensor([rank % 2 == 0]), torch.tensor([True])),
        (
            ReduceOp.MAX,
            torch.tensor([rank + 1], dtype=torch.bfloat16),
            torch.tensor([size], dtype=torch.bfloat16),
        ),
    ]
    return cases


def allreduce_basics(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    for op, tensor, expected in _reduce_cases(rank, size):
        opts = o.AllreduceOptions()
        opts.reduceOp = op
        result = value_of(pg.allreduce([tensor.clone()], opts))
        assert torch.equal(result[0], expected), (op, result, expected)
    # several inputs per rank are reduced together
    for op, expected in [
        (ReduceOp.SUM, float(sum(range(1, 2 * size + 1)))),
        (ReduceOp.MAX, float(2 * size)),
    ]:
        tensors = [torch.tensor([2.0 * rank + 1]), torch.tensor([2.0 * rank + 2])]
        opts = o.AllreduceOptions()
        opts.reduceOp = op
        for out in value_of(pg.allreduce(tensors, opts)):
            assert torch.equal(out, torch.tensor([expected]))
    x = torch.tensor([rank + 1.0])
    assert torch.equal(value_of(pg.allreduce(x))[0], torch.tensor([float(size * (size + 1) / 2)]))
    # fp16 SUM accuracy against an allgather-then-sum reference
    torch.manual_seed(rank)
    tensor = ((torch.rand(200, 1) * 2 - 1) * 65504 / size).to(torch.float16)
    gathered = value_of(pg.allgather([[torch.zeros_like(tensor) for _ in range(size)]], [tensor]))
    total = torch.stack(gathered).sum(dim=0)
    result = value_of(pg.allreduce([tensor]))
    torch.testing.assert_close(total, result[0], rtol=1e-2, atol=1e-3)
    # large: ring path, non-contiguous input, all dtypes agree bit for bit
    big = torch.arange(2 * 100_000, dtype=torch.float32).view(2, -1).t() * (rank + 1)
    assert not big.is_contiguous()
    pg.allreduce([big]).wait()
    expected = torch.arange(2 * 100_000, dtype=torch.float32).view(2, -1).t() * (
        size * (size + 1) / 2
    )
    torch.testing.assert_close(big, expected)
    pg.shutdown()


@world_sizes(2, 3)
def test_allreduce_basics(world_size):
    spawn(allreduce_basics, world_size, timeout=TIMEOUT)


def allreduce_stress(ctx):
    pg, rank, size = make_pg(ctx, threads=8), ctx.rank, ctx.world_size
    inputs = [torch.tensor([i + rank]) for i in range(1000)]
    futures = [pg.allreduce(inputs[i]).get_future() for i in range(len(inputs))]
    for i, future in enumerate(futures):
        future.wait()
        expected = torch.tensor([i * size + size * (size - 1) // 2])
        assert torch.equal(future.value()[0], expected), i
    pg.shutdown()


@world_sizes(2, 3)
def test_allreduce_stress(world_size):
    spawn(allreduce_stress, world_size, timeout=TIMEOUT)


def allreduce_coalesced(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    tensors = [torch.full((3,), float(rank)), torch.full((2, 2), float(rank + 1))]
    result = value_of(pg.allreduce_coalesced(tensors))
    assert torch.equal(result[0], torch.full((3,), float(sum(range(size)))))
    assert torch.equal(tensors[1], torch.full((2, 2), float(sum(range(1, size + 1)))))
    works = [
        pg.allreduce_coalesced([torch.tensor([float(i)]), torch.tensor([1.0])]) for i in range(100)
    ]
    for i, work in enumerate(works):
        out = work.result()
        assert out[0].item() == i * size and out[1].item() == size
    pg.shutdown()


@world_sizes(2, 3)
def test_allreduce_coalesced(world_size):
    spawn(allreduce_coalesced, world_size, timeout=TIMEOUT)


def sparse_allreduce(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    tensor = torch.sparse_coo_tensor([[rank, size]], [float(rank + 1), 1.0], size=(size + 1,))
    tensors = [tensor]
    result = value_of(pg.allreduce(tensors))
    expected = torch.tensor([float(r + 1) for r in range(size)] + [float(size)])
    assert torch.equal(result[0].to_dense(), expected)
    assert torch.equal(tensors[0].to_dense(), expected)
    pg.shutdown()


@world_sizes(2, 3)
def test_sparse_allreduce(world_size):
    spawn(sparse_allreduce, world_size, timeout=TIMEOUT)


def allreduce_timeout(ctx, per_op: bool):
    """The seed's test_allreduce_op_timeout / test_allreduce_overall_timeout as written: rank 0
    issues a 1 ms allreduce while rank 1 returns (its group goes away) with no barrier; the
    operation's own deadline has passed by the time rank 0 can tell rank 1 left, so it is the
    timeout Gloo reports that rank 0 raises, not the lost connection (issue 12 item 8)."""
    pg = make_pg(ctx)
    if ctx.rank == 0:
        t = torch.zeros(1)
        if per_op:
            opts = o.AllreduceOptions()
            opts.timeout = timedelta(milliseconds=1)
            work = pg.allreduce([t], opts)
        else:
            pg.set_timeout(timedelta(milliseconds=1))
            work = pg.allreduce([t])
        with pytest.raises(RuntimeError, match="Timed out waiting 1ms"):
            work.wait()


@pytest.mark.parametrize("per_op", [True, False])
def test_allreduce_timeout(per_op):
    spawn(allreduce_timeout, 2, args=(per_op,), timeout=TIMEOUT)


def timeout_leaves_group_usable(ctx):
    pg = make_pg(ctx)
    if ctx.rank == 0:
        opts = o.AllreduceOptions()
        opts.timeout = timedelta(milliseconds=50)
        with pytest.raises(RuntimeError, match="Timed out waiting 50ms"):
            pg.allreduce([torch.zeros(1)], opts).wait()
        ctx.store.set("timed-out", "1")
    else:
        ctx.store.wait(["timed-out"], timedelta(seconds=30))
        # rank 1 now joins collective #1 late: its message to rank 0 is discarded there
        pg.allreduce([torch.zeros(1)], _short_timeout(0.3))
    # both ranks issue collective #2: it works
    t = torch.tensor([ctx.rank + 1.0])
    pg.allreduce([t]).wait()
    assert t.item() == 3.0
    pg.shutdown()


def _short_timeout(seconds):
    opts = o.AllreduceOptions()
    opts.timeout = timedelta(seconds=seconds)
    return opts


def test_timeout_leaves_group_usable():
    spawn(timeout_leaves_group_usable, 2, timeout=TIMEOUT)


# -- reduce ----------------------------------------------------------------------------------
def reduce_basics(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    for op, tensor, expected in _reduce_cases(rank, size):
        for root in range(size):
            opts = o.ReduceOptions()
            opts.reduceOp, opts.rootRank = op, root
            mine = tensor.clone()
            result = value_of(pg.reduce([mine], opts))
            if rank == root:
                assert torch.equal(result[0], expected), (op, root, result)
            else:
                assert torch.equal(mine, tensor)  # non-roots keep their input
    x = torch.tensor([rank + 1.0])
    pg.reduce(x, root=0).wait()
    if rank == 0:
        assert x.item() == size * (size + 1) / 2
    pg.shutdown()


@world_sizes(2, 3)
def test_reduce_basics(world_size):
    spawn(reduce_basics, world_size, timeout=TIMEOUT)


# -- allgather -------------------------------------------------------------------------------
def allgather_basics(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    for n in (1, 2):
        inputs = [torch.tensor([n * rank + i]) for i in range(n)]
        outputs = [[torch.tensor([-1]) for _ in range(n * size)] for _ in range(n)]
        result = value_of(pg.allgather(outputs, inputs))
        expected = [torch.tensor([i]) for i in range(n * size)]
        for out in outputs:
            assert [t.item() for t in out] == [t.item() for t in expected]
        assert (result == outputs[0]) if n == 1 else True
    # non-contiguous input
    source = torch.arange(6, dtype=torch.float32).view(2, 3).t()[1] + rank
    outputs = [torch.zeros(2) for _ in range(size)]
    pg.allgather(outputs, source).wait()
    for r, out in enumerate(outputs):
        assert torch.equal(out, torch.tensor([1.0, 4.0]) + r)
    # inference mode
    with torch.inference_mode():
        x = torch.tensor([rank])
        outs = [torch.empty(1, dtype=torch.long) for _ in range(size)]
        pg.allgather([outs], [x]).wait()
    assert [t.item() for t in outs] == list(range(size))
    # _allgather_base and the coalesced forms
    out = torch.empty(size * 4)
    pg._allgather_base(out, torch.full((4,), float(rank))).wait()
    assert torch.equal(out, torch.arange(size).repeat_interleave(4).float())
    ins = [torch.rand(5, 5), torch.rand(10, 10)]
    ins = [torch.full_like(t, rank) for t in ins]
    outs = [torch.empty(5 * size, 5), torch.empty(10 * size, 10)]
    pg.allgather_into_tensor_coalesced(outs, ins).wait()
    for out_t, in_t in zip(outs, ins, strict=True):
        expected = torch.cat([torch.full_like(in_t, r) for r in range(size)])
        assert torch.equal(out_t, expected)
    lists = [[torch.empty(2), torch.empty(3)] for _ in range(size)]
    pg.allgather_coalesced(
        lists, [torch.full((2,), float(rank)), torch.full((3,), -float(rank))]
    ).wait()
    for r in range(size):
        assert torch.equal(lists[r][0], torch.full((2,), float(r)))
        assert torch.equal(lists[r][1], torch.full((3,), float(-r)))
    pg.shutdown()


@world_sizes(2, 3)
def test_allgather_basics(world_size):
    spawn(allgather_basics, world_size, timeout=TIMEOUT)


def allgather_stress(ctx):
    pg, rank, size = make_pg(ctx, threads=8), ctx.rank, ctx.world_size
    inputs = [torch.tensor([i + rank]) for i in range(1000)]
    outputs = [[torch.tensor([-1]) for _ in range(size)] for _ in range(1000)]
    futures = [pg.allgather([outputs[i]], [inputs[i]]).get_future() for i in range(1000)]
    for i, future in enumerate(futures):
        future.wait()
        assert [t.item() for t in future.value()] == [i + r for r in range(size)], i
    pg.shutdown()


@world_sizes(2, 3)
def test_allgather_stress(world_size):
    spawn(allgather_stress, world_size, timeout=TIMEOUT)


# -- gather / scatter ------------------------------------------------------------------------
def gather_scatter_basics(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    for root in range(size):
        opts = _root_opts(o.GatherOptions, root)
        outputs = [[torch.tensor([-1]) for _ in range(size)]] if rank == root else []
        result = value_of(pg.gather(outputs, [torch.tensor([rank])], opts))
        if rank == root:
            assert [t.item() for t in result] == list(range(size))
        else:
            assert result == []
    # non-contiguous gather input
    src = torch.arange(4).view(2, 2).t()[0] + rank
    outs = [[torch.empty(2, dtype=torch.long) for _ in range(size)]] if rank == 0 else []
    pg.gather(outs, [src], _root_opts(o.GatherOptions, 0)).wait()
    if rank == 0:
        assert [t.tolist() for t in outs[0]] == [[r, r + 2] for r in range(size)]
    for root in range(size):
        opts = _root_opts(o.ScatterOptions, root)
        out = torch.tensor([-1])
        inputs = [[torch.tensor([r * 10 + root]) for r in range(size)]] if rank == root else []
        result = value_of(pg.scatter([out], inputs, opts))
        assert out.item() == rank * 10 + root and result[0].item() == out.item()
    pg.shutdown()


@world_sizes(2, 3)
def test_gather_and_scatter(world_size):
    spawn(gather_scatter_basics, world_size, timeout=TIMEOUT)


def scatter_stress(ctx):
    pg, rank, size = make_pg(ctx, threads=8), ctx.rank, ctx.world_size
    outputs = [[torch.tensor([-1]) for _ in range(size)] for _ in range(300)]
    futures = []
    for i in range(300):
        for root in range(size):
            inputs = [[torch.tensor([i + root]) for _ in range(size)]] if root == rank else []
            futures.append(
                pg.scatter(
                    [outputs[i][root]], inputs, _root_opts(o.ScatterOptions, root)
                ).get_future()
            )
    for index, future in enumerate(futures):
        future.wait()
        i, root = divmod(index, size)
        assert future.value()[0].item() == i + root
    pg.shutdown()


@world_sizes(2, 3)
def test_scatter_stress(world_size):
    spawn(scatter_stress, world_size, timeout=TIMEOUT)


# -- reduce-scatter --------------------------------------------------------------------------
def reduce_scatter_all(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    torch.manual_seed(42)
    inputs = [torch.rand(i) for i in range(size)]  # a different size per rank
    output = torch.empty(rank)
    pg.reduce_scatter([output], [inputs]).wait()
    torch.testing.assert_close(output, inputs[rank] * size)
    out = torch.empty(20, 20)
    inp = torch.rand(20 * size, 20)
    pg._reduce_scatter_base(out, inp).wait()
    torch.testing.assert_close(out, inp.view(size, 20, 20)[rank] * size)
    outs = [torch.empty(5, 5), torch.empty(10, 10)]
    ins = [torch.rand(5 * size, 5), torch.rand(10 * size, 10)]
    pg.reduce_scatter_tensor_coalesced(outs, ins).wait()
    for out_t, in_t in zip(outs, ins, strict=True):
        torch.testing.assert_close(out_t, in_t.view(size, *out_t.shape)[rank] * size)
    opts = o.ReduceScatterOptions()
    opts.reduceOp = ReduceOp.MAX
    out = torch.empty(2)
    pg.reduce_scatter(
        [out], [[torch.full((2,), float(rank + r)) for r in range(size)]], opts
    ).wait()
    assert torch.equal(out, torch.full((2,), float(size - 1 + rank)))
    pg.shutdown()


@world_sizes(2, 3)
def test_reduce_scatter(world_size):
    spawn(reduce_scatter_all, world_size, timeout=TIMEOUT)


# -- all-to-all ------------------------------------------------------------------------------
def alltoall_all(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    inputs = [torch.full((2,), rank * 10 + j) for j in range(size)]
    outputs = [torch.empty(2, dtype=torch.long) for _ in range(size)]
    pg.alltoall(outputs, inputs).wait()
    assert [t.tolist() for t in outputs] == [[i * 10 + rank] * 2 for i in range(size)]
    inp = torch.arange(size * 3) + 100 * rank
    out = torch.empty(size * 3, dtype=torch.long)
    pg.alltoall_base(out, inp, [], []).wait()
    expected = torch.cat([torch.arange(rank * 3, rank * 3 + 3) + 100 * i for i in range(size)])
    assert torch.equal(out, expected)
    # uneven splits: rank i sends (j + 1) rows to rank j
    in_splits = [j + 1 for j in range(size)]
    out_splits = [rank + 1] * size
    inp = torch.full((sum(in_splits), 2), float(rank))
    out = torch.empty(sum(out_splits), 2)
    pg.alltoall_base(out, inp, out_splits, in_splits).wait()
    expected = torch.cat([torch.full((rank + 1, 2), float(i)) for i in range(size)])
    assert torch.equal(out, expected)
    pg.shutdown()


@world_sizes(2, 3)
def test_alltoall(world_size):
    spawn(alltoall_all, world_size, timeout=TIMEOUT)


# -- barrier, p2p, mixed, sequence numbers ---------------------------------------------------
def barrier_p2p_mixed(ctx):
    pg, rank, size = make_pg(ctx, threads=4), ctx.rank, ctx.world_size
    pg.barrier().wait()
    right, left = (rank + 1) % size, (rank - 1) % size
    send_works = [pg.send([torch.tensor([rank * 100 + i])], right, tag=7) for i in range(5)]
    received = [torch.empty(1, dtype=torch.long) for _ in range(5)]
    recv_works = [pg.recv([received[i]], left, tag=7) for i in range(5)]
    for work in send_works + recv_works:
        work.wait()
    assert [t.item() for t in received] == [left * 100 + i for i in range(5)]  # in order
    if rank == 0:
        buf = torch.empty(1, dtype=torch.long)
        sources = set()
        for _ in range(size - 1):
            work = pg.recv_anysource([buf], tag=3)
            work.wait()
            assert buf.item() == work.source_rank() * 1000
            sources.add(work.source_rank())
        assert sources == set(range(1, size))
    else:
        pg.send([torch.tensor([rank * 1000])], 0, tag=3).wait()
    # a mix of concurrent collectives of different kinds
    works, checks = [], []
    for i in range(60):
        t = torch.tensor([float(i + rank)])
        works.append(pg.allreduce([t]))
        checks.append((t, float(i * size + size * (size - 1) / 2)))
        b = torch.tensor([rank + i])
        works.append(pg.broadcast([b], _root_opts(o.BroadcastOptions, i % size)))
        checks.append((b, float(i % size + i)))
        outs = [torch.empty(1, dtype=torch.long) for _ in range(size)]
        works.append(pg.allgather([outs], [torch.tensor([rank * i])]))
        checks.append((outs, [float(r * i) for r in range(size)]))
    pyc10d.futures.wait_all([w.get_future() for w in works])
    for tensor, expected in checks:
        if isinstance(tensor, list):
            assert [t.item() for t in tensor] == expected
        else:
            assert tensor.item() == expected
    seq = pg._get_sequence_number_for_group()
    ctx.store.set(f"seq/{rank}", str(seq))
    assert {ctx.store.get(f"seq/{r}") for r in range(size)} == {str(seq).encode()}
    pg.shutdown()


@world_sizes(2, 3)
def test_barrier_p2p_and_mixed_concurrency(world_size):
    spawn(barrier_p2p_mixed, world_size, timeout=TIMEOUT)


def empty_tensors(ctx):
    pg = make_pg(ctx)
    xs = [torch.FloatTensor([])]
    assert value_of(pg.broadcast(xs))[0].numel() == 0
    assert value_of(pg.allreduce([torch.FloatTensor([])]))[0].numel() == 0
    outs = [torch.FloatTensor([]) for _ in range(ctx.world_size)]
    pg.allgather([outs], [torch.FloatTensor([])]).wait()
    pg.shutdown()


@world_sizes(2, 3)
def test_empty_tensors(world_size):
    spawn(empty_tensors, world_size, timeout=TIMEOUT)


def bad_input_keeps_group_usable(ctx):
    pg = make_pg(ctx)
    with pytest.raises(RuntimeError, match="invalid root rank"):
        pg.broadcast([torch.zeros(1)], _root_opts(o.BroadcastOptions, ctx.world_size))
    with pytest.raises(RuntimeError, match="requires non-empty tensor list"):
        pg.allreduce([])
    with pytest.raises(RuntimeError, match="invalid tensor size"):
        pg.allreduce([torch.zeros(1), torch.zeros(2)])
    t = torch.ones(1)
    pg.allreduce([t]).wait()
    assert t.item() == ctx.world_size
    assert pg._get_sequence_number_for_group() == 1
    pg.shutdown()


@world_sizes(2, 3)
def test_bad_input_keeps_group_usable(world_size):
    spawn(bad_input_keeps_group_usable, world_size, timeout=TIMEOUT)


def killed_peer(ctx):
    import os
    import time

    pg = make_pg(ctx, timeout=60)
    pg.barrier().wait()
    victim = ctx.world_size - 1
    survivors = [f"passed_barrier/{r}" for r in range(victim)]
    if ctx.rank == victim:
        # die once the others are past the barrier, so that the allreduce below is what fails
        # (exiting the instant its own barrier returns would not fail theirs either: a lost
        # peer fails only the calls that need it, see tests/process_group/test_peer_exit.py;
        # a survivor told by the arena that the other gave up names this rank too)
        ctx.store.wait(survivors, timedelta(seconds=30))
        os._exit(0)
    ctx.store.set(survivors[ctx.rank], "1")
    pending = pg.allreduce([torch.ones(1)])
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=f"rank {victim}"):
        pending.wait()
    with pytest.raises(RuntimeError, match=f"rank {victim}"):
        pg.allreduce([torch.ones(1)]).wait()
    elapsed = time.monotonic() - start
    assert elapsed < 20, elapsed  # detected from the broken connection, not the 60 s timeout
    pg.shutdown()
    return "survived"


@world_sizes(2, 3)
def test_killed_peer_fails_ops_naming_it(world_size):
    with pytest.raises(pyc10d.testing.RankFailedError) as info:
        spawn(killed_peer, world_size, timeout=TIMEOUT)
    # only the victim failed (it exited without a result); the survivors passed their asserts
    assert set(info.value.failures) == {world_size - 1}, info.value


def set_timeout_readback(ctx):
    pg = make_pg(ctx, timeout=50)
    pg.allreduce(torch.rand(10)).wait()
    assert pg.options._timeout == timedelta(seconds=50)
    pg._set_default_timeout(timedelta(seconds=23))
    assert pg.options._timeout == timedelta(seconds=23)
    pg.shutdown()


def test_set_timeout_readback():
    spawn(set_timeout_readback, 2, timeout=TIMEOUT)


def large_exchanges(ctx):
    """Blocks from 256 KiB up: over TCP they go pairwise, receives posted before sends."""
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    n = 100_000  # 400 KB of float32 per block
    outputs = [torch.empty(n) for _ in range(size)]
    pg.allgather([outputs], [torch.full((n,), float(rank))]).wait()
    for r, out in enumerate(outputs):
        assert torch.equal(out, torch.full((n,), float(r))), r
    # uneven alltoall: rank r sends (n + 1000 * (r + d)) elements to rank d, valued 10 r + d
    sends = [torch.full((n + 1000 * (rank + d),), 10.0 * rank + d) for d in range(size)]
    recvs = [torch.empty(n + 1000 * (s + rank)) for s in range(size)]
    pg.alltoall(recvs, sends).wait()
    for s, got in enumerate(recvs):
        assert torch.equal(got, torch.full_like(got, 10.0 * s + rank)), s
    pg.shutdown()


@world_sizes(2, 3)
def test_large_allgather_and_uneven_alltoall(world_size):
    spawn(large_exchanges, world_size, timeout=TIMEOUT)
