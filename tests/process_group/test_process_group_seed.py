"""More of torch's ProcessGroupGloo tests (CPU), run across processes on a live ProcessGroup.

Covers what tests/process_group/test_process_group.py does not: every ``*_checks`` test of the
seed issued through a real group (the group stays usable and its sequence number does not move,
except for the checks only one rank can make, of a gather or scatter root's list or a list on a
non-root: those refuse the collective on every rank, taking its sequence number),
the remaining stress and async tests, point-to-point all-to-all and complex tensors, dtype
coverage, large messages, barrier ordering, store timeouts and ``tcp://`` rendezvous.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
import torch

import pyc10d
from pyc10d import ProcessGroup, ReduceOp
from pyc10d.process_group import options as o
from pyc10d.process_group.validation import RankArgumentError
from pyc10d.testing import spawn, world_sizes

from tests.helpers.pg import make_pg, opts_of, value_of

# every test here runs under both transports (auto and tcp): see tests/conftest.py
pytestmark = pytest.mark.both_transports

TIMEOUT = 90


REFUSED = "refused"


def expect_errors(pg, cases, error=RuntimeError):
    """Run each ``(regex, call)``; each must raise ``error`` before anything is issued. A case
    ``(regex, call, REFUSED)`` is a check only this rank can make: it raises
    ``RankArgumentError`` and takes one sequence number (the collective it refuses)."""
    for regex, call, *refused in cases:
        start = pg._get_sequence_number_for_group()
        expected = RankArgumentError if refused else error
        with pytest.raises(expected, match=regex):
            call()
        assert pg._get_sequence_number_for_group() == start + len(refused), regex


# -- the seed's *_checks tests, through a live group -------------------------------------------
def _broadcast_cases(pg, rank, size, t1, t2, t3):
    def bcast(tensors, root, root_tensor=0):
        opts = opts_of(o.BroadcastOptions, rootRank=root, rootTensor=root_tensor)
        return lambda: pg.broadcast(tensors, opts)

    return [
        ("invalid root rank", bcast([t1], -1)),
        ("invalid root rank", bcast([t1], size)),
        ("invalid root tensor", bcast([t1], rank, -1)),
        ("invalid root tensor", bcast([t1], rank, 1)),
        ("invalid root tensor", bcast([], rank)),
        ("invalid tensor type", bcast([t1, t2], rank)),
        ("invalid tensor size", bcast([t1, t3], rank)),
    ]


def _allreduce_cases(pg, t1, t2, t3):
    sparse2 = torch.sparse_coo_tensor([[0]], [1], size=(2,))
    sparse4 = torch.sparse_coo_tensor([[0]], [1], size=(4,))
    cases = [
        ("requires non-empty tensor list", lambda: pg.allreduce([], o.AllreduceOptions())),
        ("invalid tensor type", lambda: pg.allreduce([t1, t2], o.AllreduceOptions())),
        ("invalid tensor size", lambda: pg.allreduce([t1, t3], o.AllreduceOptions())),
        # test_sparse_allreduce_checks
        ("invalid tensor layout", lambda: pg.allreduce([t1, sparse2])),
        ("invalid tensor size", lambda: pg.allreduce([sparse2, sparse4])),
    ]
    for op in (ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX):
        opts = opts_of(o.AllreduceOptions, reduceOp=op)
        cases.append(
            ("unsupported reduction operation", lambda opts=opts: pg.allreduce([sparse4], opts))
        )
    return cases


def _allreduce_coalesced_cases(pg, t1, t2):
    sparse = torch.sparse_coo_tensor([[0]], [1], size=(1,))

    def coalesced(tensors):
        return lambda: pg.allreduce_coalesced(tensors, o.AllreduceCoalescedOptions())

    return [
        ("requires non-empty tensor list", coalesced([])),
        ("tensors must all have the same type", coalesced([t1, t2])),
        ("invalid tensor layout at index", coalesced([t1, sparse])),
        ("unsupported layout", coalesced([sparse, sparse.clone()])),
    ]


def _reduce_cases(pg, rank, size, t1):
    def red(tensors, root, root_tensor=0):
        opts = opts_of(o.ReduceOptions, rootRank=root, rootTensor=root_tensor)
        return lambda: pg.reduce(tensors, opts)

    return [
        ("invalid root rank", red([t1], -1)),
        ("invalid root rank", red([t1], size)),
        ("invalid root tensor", red([t1], rank, 1)),
        ("requires a single-element tensor list", red([t1, t1], rank)),
    ]


def _gather_cases(pg, rank, size, t1, t2, t3):
    def gat(outputs, inputs, root):
        opts = opts_of(o.GatherOptions, rootRank=root)
        return lambda: pg.gather(outputs, inputs, opts)

    wrong = "Incorrect output list size {}. Output list size should be {}"
    return [
        ("invalid root rank", gat([], [t1], -1)),
        ("invalid root rank", gat([], [t1], size)),
        ("requires a single-element input tensor list", gat([], [], 0)),
        ("requires a single-element input tensor list", gat([], [t1, t1], 0)),
        ("requires a single-element output list", gat([], [t1], rank), REFUSED),
        (
            "requires a single-element output list",
            gat([[t1] * size, [t1] * size], [t1], rank),
            REFUSED,
        ),
        (wrong.format(size - 1, size), gat([[t1] * (size - 1)], [t1], rank), REFUSED),
        (wrong.format(size + 1, size), gat([[t1] * (size + 1)], [t1], rank), REFUSED),
        ("invalid tensor type", gat([[t2] * size], [t1], rank), REFUSED),
        ("invalid tensor size", gat([[t3] * size], [t1], rank), REFUSED),
        (
            "requires empty output on non-root",
            gat([[t1] * size], [t1], (rank + 1) % size),
            REFUSED,
        ),
    ]


def _scatter_cases(pg, rank, size, t1, t2, t3):
    def sca(outputs, inputs, root):
        opts = opts_of(o.ScatterOptions, rootRank=root)
        return lambda: pg.scatter(outputs, inputs, opts)

    wrong = "Incorrect input list size {}. Input list size should be {}"
    return [
        ("invalid root rank", sca([t1], [], -1)),
        ("invalid root rank", sca([t1], [], size)),
        ("requires a single-element output tensor list", sca([], [], 0)),
        ("requires a single-element output tensor list", sca([t1, t1], [], 0)),
        ("requires a single-element input list", sca([t1], [], rank), REFUSED),
        (
            "requires a single-element input list",
            sca([t1], [[t1] * size, [t1] * size], rank),
            REFUSED,
        ),
        (wrong.format(size - 1, size), sca([t1], [[t1] * (size - 1)], rank), REFUSED),
        (wrong.format(size + 1, size), sca([t1], [[t1] * (size + 1)], rank), REFUSED),
        ("invalid tensor type", sca([t1], [[t2] * size], rank), REFUSED),
        ("invalid tensor size", sca([t1], [[t3] * size], rank), REFUSED),
        (
            "requires empty input on non-root",
            sca([t1], [[t1] * size], (rank + 1) % size),
            REFUSED,
        ),
    ]


def _allgather_cases(pg, size, t1, t2, t3):
    same_length = "requires input/output tensor lists to have the same length"
    return [
        ("requires non-empty input tensor list", lambda: pg.allgather([], [])),
        (same_length, lambda: pg.allgather([], [t1])),
        (same_length, lambda: pg.allgather([[t1] * size, [t1] * size], [t1])),
        ("invalid output tensor list", lambda: pg.allgather([[t1] * (size - 1)], [t1])),
        ("invalid output tensor list", lambda: pg.allgather([[t1] * (size + 1)], [t1])),
        (
            "invalid tensor type",
            lambda: pg.allgather([[t1, t1] * size, [t1, t1] * size], [t1, t2]),
        ),
        (
            "invalid tensor size",
            lambda: pg.allgather([[t1, t1] * size, [t1, t1] * size], [t1, t3]),
        ),
        ("invalid tensor type", lambda: pg.allgather([([t1, t2] * size)[:size]], [t1])),
        ("invalid tensor size", lambda: pg.allgather([([t1, t3] * size)[:size]], [t1])),
    ]


def _allgather_coalesced_cases(pg, size):
    inputs = [torch.zeros([1])]

    def lists(first):
        return [first] + [[torch.zeros([1])] for _ in range(size - 1)]

    too_many = [[torch.zeros([1])] for _ in range(size + 1)]
    return [
        (
            "invalid size of output tensor at index 0",
            lambda: pg.allgather_coalesced(lists([torch.zeros([0])]), inputs),
        ),
        (
            "invalid tensor type at index 0",
            lambda: pg.allgather_coalesced(lists([torch.zeros([1], dtype=torch.float64)]), inputs),
        ),
        (
            "output lists should be equal to world size",
            lambda: pg.allgather_coalesced(too_many, inputs),
        ),
    ]


def _alltoall_cases(pg, rank, size, t1, t2, t3):
    rows = torch.zeros(size, 2)
    own_block_too_big = [t3 if r == rank else t1 for r in range(size)]
    return [
        (  # the block a rank sends itself: only it can check that (issue 15 item 4)
            rf"invalid tensor size at index {rank} \(expected \(1\), got \(2\)\)",
            lambda: pg.alltoall(own_block_too_big, [t1] * size),
            REFUSED,
        ),
        ("does not match world size", lambda: pg.alltoall([t1] * (size + 1), [t1] * size)),
        ("does not match world size", lambda: pg.alltoall([t1] * size, [t1] * (size - 1))),
        ("invalid tensor type", lambda: pg.alltoall([t1] * size, [t1] + [t2] * (size - 1))),
        ("must have the same type", lambda: pg.alltoall([t2] * size, [t1] * size)),
        ("must have the same type", lambda: pg.alltoall_base(rows.double(), rows, [], [])),
        (
            "does not divide equally",
            lambda: pg.alltoall_base(torch.zeros(size + 1), torch.zeros(size + 1), [], []),
        ),
        (
            "Split sizes doesn't match",
            lambda: pg.alltoall_base(rows, rows, [1] * size, [2] * size),
        ),
    ]


def argument_checks(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    t1 = torch.zeros([1], dtype=torch.float32)
    t2 = torch.zeros([1], dtype=torch.float64)
    t3 = torch.zeros([2], dtype=torch.float32)
    expect_errors(pg, _broadcast_cases(pg, rank, size, t1, t2, t3))
    expect_errors(pg, _allreduce_cases(pg, t1, t2, t3))
    expect_errors(pg, _allreduce_coalesced_cases(pg, t1, t2))
    expect_errors(pg, _reduce_cases(pg, rank, size, t1))
    expect_errors(pg, _gather_cases(pg, rank, size, t1, t2, t3))
    expect_errors(pg, _scatter_cases(pg, rank, size, t1, t2, t3))
    expect_errors(pg, _allgather_cases(pg, size, t1, t2, t3))
    expect_errors(pg, _allgather_coalesced_cases(pg, size))
    expect_errors(pg, _alltoall_cases(pg, rank, size, t1, t2, t3))
    # a flat tensor list where a list of lists belongs is a TypeError
    not_nested = [torch.zeros([0])]
    expect_errors(
        pg,
        [("expected a list of tensor", lambda: pg.allgather_coalesced(not_nested, [t1]))],
        TypeError,
    )
    refusals = 15  # 7 gather, 7 scatter and 1 alltoall checks only one rank can make
    assert pg._get_sequence_number_for_group() == refusals
    assert all(t.eq(0).all() for t in (t1, t2, t3))  # nothing was written

    # the group is still usable: one good call of each kind checked above
    x = torch.tensor([float(rank)])
    pg.broadcast([x], opts_of(o.BroadcastOptions, rootRank=size - 1)).wait()
    assert x.item() == size - 1
    x = torch.tensor([rank + 1.0])
    pg.allreduce([x]).wait()
    assert x.item() == size * (size + 1) / 2
    pair = [torch.tensor([1.0]), torch.tensor([2.0, 3.0])]
    pg.allreduce_coalesced(pair).wait()
    assert pair[0].tolist() == [size] and pair[1].tolist() == [2.0 * size, 3.0 * size]
    sparse = torch.sparse_coo_tensor([[rank]], [1.0], size=(size,))
    assert torch.equal(value_of(pg.allreduce([sparse]))[0].to_dense(), torch.ones(size))
    x = torch.tensor([rank + 1.0])
    pg.reduce([x], opts_of(o.ReduceOptions, rootRank=0)).wait()
    assert x.item() == (size * (size + 1) / 2 if rank == 0 else rank + 1.0)
    outs = [[torch.zeros(1) for _ in range(size)]] if rank == 0 else []
    pg.gather(outs, [torch.tensor([float(rank)])], opts_of(o.GatherOptions, rootRank=0)).wait()
    if rank == 0:
        assert [t.item() for t in outs[0]] == list(range(size))
    out = torch.zeros(1)
    ins = [[torch.tensor([10.0 + r]) for r in range(size)]] if rank == 0 else []
    pg.scatter([out], ins, opts_of(o.ScatterOptions, rootRank=0)).wait()
    assert out.item() == 10 + rank
    outs = [torch.zeros(1) for _ in range(size)]
    pg.allgather([outs], [torch.tensor([float(rank)])]).wait()
    assert [t.item() for t in outs] == list(range(size))
    lists = [[torch.zeros(1)] for _ in range(size)]
    pg.allgather_coalesced(lists, [torch.tensor([-float(rank)])]).wait()
    assert [lst[0].item() for lst in lists] == [-float(r) for r in range(size)]
    outs = [torch.zeros(1) for _ in range(size)]
    pg.alltoall(outs, [torch.tensor([rank * 10.0 + r]) for r in range(size)]).wait()
    assert [t.item() for t in outs] == [r * 10.0 + rank for r in range(size)]
    assert pg._get_sequence_number_for_group() == refusals + 10
    pg.shutdown()


@world_sizes(2, 3)
def test_argument_checks_through_group(world_size):
    """broadcast/allreduce/allreduce_coalesced/sparse_allreduce/reduce/gather/scatter/
    allgather/allgather_coalesced(/alltoall) checks: each raises, then the group still works."""
    spawn(argument_checks, world_size, timeout=TIMEOUT)


def tensor_dtype_mismatch(ctx):
    """torch's _test_tensor_dtype_mismatch at the group level: every mixed-dtype call fails."""
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    tensor = torch.ones(2, 2) * 7
    tensor_h = tensor.half()
    tensors = [torch.zeros(2, 2) for _ in range(size)]
    tensors_h = list(tensors)
    tensors_h[1] = tensors_h[1].half()
    here = opts_of(o.GatherOptions, rootRank=rank)
    here_s = opts_of(o.ScatterOptions, rootRank=rank)
    mismatch = "invalid tensor type|must all have the same type|must have the same type"
    calls = [
        lambda: pg.allgather([tensors_h], [tensor]),
        lambda: pg.allgather([tensors], [tensor_h]),
        lambda: pg.allgather_coalesced([[t] for t in tensors_h], [tensor]),
        lambda: pg.allgather_coalesced([[t] for t in tensors], [tensor_h]),
        lambda: pg.allreduce_coalesced(tensors_h),
        lambda: pg.allreduce([tensor, tensor_h]),
        lambda: pg.reduce_scatter([tensor], [tensors_h]),
        lambda: pg.reduce_scatter([tensor_h], [tensors]),
        lambda: pg.alltoall_base(tensor_h.repeat(size, 1), tensor.repeat(size, 1), [], []),
        lambda: pg.alltoall(tensors_h, tensors),
        lambda: pg.alltoall(tensors, tensors_h),
        lambda: pg._allgather_base(torch.zeros(2 * size, 2, dtype=torch.half), tensor),
        lambda: pg._reduce_scatter_base(tensor_h, tensor.repeat(size, 1)),
        lambda: pg.broadcast([tensor, tensor_h]),
    ]
    # a root's list only the root can check: refused on every rank (one sequence number each)
    refused = [
        lambda: pg.scatter([tensor], [tensors_h], here_s),
        lambda: pg.scatter([tensor_h], [tensors], here_s),
        lambda: pg.gather([tensors], [tensor_h], here),
        lambda: pg.gather([tensors_h], [tensor], here),
    ]
    cases = [(mismatch, call) for call in calls] + [(mismatch, c, REFUSED) for c in refused]
    expect_errors(pg, cases)
    assert pg._get_sequence_number_for_group() == len(refused)
    pg.allgather([tensors], [tensor * rank]).wait()
    assert all(torch.equal(t, tensor * r) for r, t in enumerate(tensors))
    pg.shutdown()


@world_sizes(2, 3)
def test_tensor_dtype_mismatch(world_size):
    spawn(tensor_dtype_mismatch, world_size, timeout=TIMEOUT)


def tensor_dtype_complex(ctx):
    """torch's _test_tensor_dtype_complex: complex tensors travel as their real pairs.

    torch's front end views complex tensors as real before calling the group; the group itself
    moves complex tensors directly, and mixing complex with real in one call is a type error.
    """
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    torch.manual_seed(rank)
    tensor = torch.rand(2)
    tensor_c = torch.view_as_complex(tensor)  # a 0-d complex tensor
    expected = []
    for r in range(size):
        torch.manual_seed(r)
        expected.append(torch.rand(2))
    # real into real, complex into complex, and complex as its real view
    outs = [torch.zeros(2) for _ in range(size)]
    pg.allgather([outs], [tensor]).wait()
    assert all(torch.equal(a, b) for a, b in zip(outs, expected, strict=True))
    outs_c = [torch.zeros((), dtype=torch.complex64) for _ in range(size)]
    pg.allgather([outs_c], [tensor_c]).wait()
    assert all(torch.equal(torch.view_as_real(a), b) for a, b in zip(outs_c, expected, strict=True))
    outs = [torch.zeros(2) for _ in range(size)]
    pg.allgather([outs], [torch.view_as_real(tensor_c).view(-1)]).wait()
    assert all(torch.equal(a, b) for a, b in zip(outs, expected, strict=True))
    # mixing complex and real in one group call is a type error (nothing is sent)
    mixed = [torch.zeros(2) for _ in range(size)]
    mixed[1] = torch.zeros((), dtype=torch.complex64)
    expect_errors(
        pg,
        [
            ("invalid tensor type", lambda: pg.allgather([mixed], [tensor])),
            ("invalid tensor type", lambda: pg.allgather([mixed], [tensor_c])),
        ],
    )
    assert pg._get_sequence_number_for_group() == 3
    pg.shutdown()


@world_sizes(2, 3)
def test_tensor_dtype_complex(world_size):
    spawn(tensor_dtype_complex, world_size, timeout=TIMEOUT)


# -- stress and async --------------------------------------------------------------------------
def _coalesced_expected(i, size):
    return float(i * size + size * (size - 1) // 2)


def allreduce_coalesced_stress(ctx):
    pg, rank, size = make_pg(ctx, threads=8), ctx.rank, ctx.world_size
    # like the seed: the same tensor twice in each list
    inputs = [2 * [torch.tensor([i + rank])] for i in range(1000)]
    futures = [pg.allreduce_coalesced(pair).get_future() for pair in inputs]
    for i, future in enumerate(futures):
        future.wait()
        result = future.value()
        assert len(result) == 2, i
        assert [t.item() for t in result] == [_coalesced_expected(i, size)] * 2, i
    pg.shutdown()


@world_sizes(2, 3)
def test_allreduce_coalesced_stress(world_size):
    spawn(allreduce_coalesced_stress, world_size, timeout=TIMEOUT)


def coalesced_async(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    # test_allreduce_coalesced_async
    xs = [2 * [torch.tensor([i + rank])] for i in range(2)]
    futs = [pg.allreduce_coalesced(x).get_future() for x in xs]
    torch.futures.wait_all(futs)
    for i, fut in enumerate(futs):
        assert [t.item() for t in fut.wait()] == [_coalesced_expected(i, size)] * 2
    # test_allgather_coalesced_async
    xxs = [[torch.tensor([i + rank]), torch.tensor([i + rank, -1])] for i in range(2)]
    yys = [[[torch.zeros_like(x) for x in xx] for _ in range(size)] for xx in xxs]
    futs = [pg.allgather_coalesced(yy, xx).get_future() for xx, yy in zip(xxs, yys, strict=True)]
    torch.futures.wait_all(futs)
    for i, yy in enumerate(yys):
        for r, outputs in enumerate(yy):
            assert outputs[0].tolist() == [i + r] and outputs[1].tolist() == [i + r, -1]
    pg.shutdown()


@world_sizes(2, 3)
def test_coalesced_async(world_size):
    spawn(coalesced_async, world_size, timeout=TIMEOUT)


def gather_stress(ctx):
    pg, rank, size = make_pg(ctx, threads=8), ctx.rank, ctx.world_size
    futures = []
    for i in range(1000):
        for root in range(size):
            outputs = [[torch.tensor([-1]) for _ in range(size)]] if root == rank else []
            opts = opts_of(o.GatherOptions, rootRank=root)
            futures.append(pg.gather(outputs, [torch.tensor([i + rank])], opts).get_future())
    for index, future in enumerate(futures):
        future.wait()
        i, root = divmod(index, size)
        if root == rank:
            assert [t.item() for t in future.value()] == [i + r for r in range(size)], index
        else:
            assert future.value() == [], index
    pg.shutdown()


@world_sizes(2, 3)
def test_gather_stress(world_size):
    spawn(gather_stress, world_size, timeout=TIMEOUT)


def reduce_stress(ctx):
    pg, rank, size = make_pg(ctx, threads=8), ctx.rank, ctx.world_size
    futures, tensors = [], []
    for i in range(1000):
        for root in range(size):
            tensor = torch.tensor([i + rank])
            tensors.append(tensor)
            futures.append(pg.reduce([tensor], opts_of(o.ReduceOptions, rootRank=root)))
    futures = [work.get_future() for work in futures]
    for index, future in enumerate(futures):
        future.wait()
        i, root = divmod(index, size)
        result = future.value()
        assert result[0] is tensors[index]
        if root == rank:
            assert result[0].item() == _coalesced_expected(i, size), index
        else:
            assert result[0].item() == i + rank, index  # non-roots keep their input
    pg.shutdown()


@world_sizes(2, 3)
def test_reduce_stress(world_size):
    spawn(reduce_stress, world_size, timeout=TIMEOUT)


# -- point to point ----------------------------------------------------------------------------
def send_recv_all_to_all(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    inputs = [torch.tensor([rank]) for _ in range(size)]
    outputs = [torch.tensor([-1]) for _ in range(size)]
    peers = [r for r in range(size) if r != rank]
    send_works = [pg.send([inputs[r]], r, 0) for r in peers]
    recv_works = [pg.recv([outputs[r]], r, 0) for r in peers]
    for work in send_works + recv_works:
        work.wait()
        assert work.is_completed() and work.is_success()
    for r in range(size):
        assert outputs[r].item() == (-1 if r == rank else r)
    # p2p does not consume collective sequence numbers
    assert pg._get_sequence_number_for_group() == 0
    pg.shutdown()


@world_sizes(2, 3)
def test_send_recv_all_to_all(world_size):
    spawn(send_recv_all_to_all, world_size, timeout=TIMEOUT)


def send_recv_complex(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    right, left = (rank + 1) % size, (rank - 1) % size
    for dtype in (torch.complex64, torch.complex128):
        mine = torch.tensor([complex(rank, -rank), complex(0.5, rank + 0.25)], dtype=dtype)
        send = pg.send([mine], right, tag=11)
        got = torch.zeros(2, dtype=dtype)
        pg.recv([got], left, tag=11).wait()
        send.wait()
        expected = torch.tensor([complex(left, -left), complex(0.5, left + 0.25)], dtype=dtype)
        assert torch.equal(got, expected), (dtype, got)
    # root 0 to every rank, as a broadcast by hand
    if rank == 0:
        data = torch.randn(4, 3, dtype=torch.complex64)
        for peer in range(1, size):
            pg.send([data], peer, tag=12).wait()
        pg.send([torch.view_as_real(data).contiguous()], 1, tag=13).wait()
        pg.shutdown()
        return torch.view_as_real(data).tolist()
    got = torch.empty(4, 3, dtype=torch.complex64)
    pg.recv([got], 0, tag=12).wait()
    if rank == 1:  # the same bytes received as the real view
        real = torch.empty(4, 3, 2)
        pg.recv([real], 0, tag=13).wait()
        assert torch.equal(torch.view_as_complex(real), got)
    pg.shutdown()
    return torch.view_as_real(got).tolist()


@world_sizes(2, 3)
def test_send_recv_complex(world_size):
    results = spawn(send_recv_complex, world_size, timeout=TIMEOUT)
    assert all(r == results[0] for r in results)


def bool_tensors(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    tensor = torch.tensor([1, 0, 0, 1], dtype=torch.bool)
    out = tensor.clone() if rank == 0 else torch.zeros(4, dtype=torch.bool)
    pg.broadcast(out, root=0).wait()
    assert torch.equal(out, tensor)
    # and through the other collectives
    mine = torch.tensor([rank == 0, rank == size - 1, True, False])
    x = mine.clone()
    pg.allreduce([x]).wait()  # SUM on bool is a logical or
    assert x.tolist() == [True, True, True, False]
    x = mine.clone()
    pg.allreduce([x], opts_of(o.AllreduceOptions, reduceOp=ReduceOp.PRODUCT)).wait()
    assert x.tolist() == [False, False, True, False]  # PRODUCT is a logical and
    outs = [torch.zeros(4, dtype=torch.bool) for _ in range(size)]
    pg.allgather([outs], [mine]).wait()
    assert [t.tolist() for t in outs] == [[r == 0, r == size - 1, True, False] for r in range(size)]
    out = torch.zeros(size * 2, dtype=torch.bool)
    pg.alltoall_base(out, torch.tensor([rank % 2 == 0, True] * size), [], []).wait()
    assert out.tolist() == [v for r in range(size) for v in (r % 2 == 0, True)]
    if size > 1:
        if rank == 0:
            pg.send([tensor], 1).wait()
        elif rank == 1:
            got = torch.zeros(4, dtype=torch.bool)
            pg.recv([got], 0).wait()
            assert torch.equal(got, tensor)
    pg.shutdown()


@world_sizes(2, 3)
def test_bool_tensors(world_size):
    spawn(bool_tensors, world_size, timeout=TIMEOUT)


# -- dtype matrix ------------------------------------------------------------------------------
DTYPES = [
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
]


SMALL, LARGE = 5, 70_001  # LARGE: over 64 KB in every dtype, so allreduce takes the ring path


def _rank_input(dtype, rank, size, n=SMALL, op=ReduceOp.SUM):
    """This rank's input for ``op``: small integers, exact in every dtype, differing by rank."""
    index = torch.arange(n)
    conjunctive = op in (ReduceOp.PRODUCT, ReduceOp.MIN)
    if dtype == torch.bool:
        hit = (index + rank) % (size + 1) == 0
        return ~hit if conjunctive else hit
    # a product of at most 2 ** 3, or a sum of at most 24
    values = 1 + (index + rank) % 2 if op == ReduceOp.PRODUCT else (index % 3) * size + rank
    if dtype.is_complex:
        return torch.complex(values.double(), -values.double() / 2).to(dtype)
    return values.to(dtype)


def _reference(dtype, size, op, n=SMALL):
    """``op`` of every rank's input, computed locally in a wide dtype, then cast."""
    inputs = [_rank_input(dtype, r, size, n, op) for r in range(size)]
    if dtype == torch.bool:
        stacked = torch.stack(inputs)
        return stacked.any(0) if op in (ReduceOp.SUM, ReduceOp.MAX) else stacked.all(0)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    stacked = torch.stack([t.to(wide) for t in inputs])
    if op == ReduceOp.SUM:
        result = stacked.sum(0)
    elif op == ReduceOp.AVG:
        result = stacked.sum(0) / size
    elif op == ReduceOp.PRODUCT:
        result = stacked.prod(0)
    elif op == ReduceOp.MAX:
        result = stacked.amax(0)
    else:
        result = stacked.amin(0)
    return result.to(dtype)


def _ops_for(dtype):
    ops = [ReduceOp.SUM]
    if not dtype.is_complex:
        ops += [ReduceOp.MAX, ReduceOp.MIN, ReduceOp.PRODUCT]
    if dtype.is_floating_point or dtype.is_complex:
        ops.append(ReduceOp.AVG)
    return ops


def dtype_matrix(ctx):
    pg, rank, size = make_pg(ctx, threads=4), ctx.rank, ctx.world_size
    works, checks = [], []
    for dtype in DTYPES:
        for n in (SMALL, LARGE):
            for op in _ops_for(dtype):
                x = _rank_input(dtype, rank, size, n, op)
                works.append(pg.allreduce([x], opts_of(o.AllreduceOptions, reduceOp=op)))
                checks.append((f"allreduce {op} {dtype} n={n}", x, _reference(dtype, size, op, n)))
        x = _rank_input(dtype, rank, size)
        works.append(pg.broadcast([x], opts_of(o.BroadcastOptions, rootRank=size - 1)))
        checks.append((f"broadcast {dtype}", x, _rank_input(dtype, size - 1, size)))
        outs = [torch.zeros(SMALL, dtype=dtype) for _ in range(size)]
        works.append(pg.allgather([outs], [_rank_input(dtype, rank, size)]))
        for r in range(size):
            checks.append((f"allgather {dtype} from {r}", outs[r], _rank_input(dtype, r, size)))
        x = _rank_input(dtype, rank, size)
        works.append(pg.reduce([x], opts_of(o.ReduceOptions, rootRank=size - 1)))
        expected = _reference(dtype, size, ReduceOp.SUM) if rank == size - 1 else x.clone()
        checks.append((f"reduce {dtype}", x, expected))
    pyc10d.futures.wait_all([w.get_future() for w in works])
    for what, got, expected in checks:
        assert got.dtype == expected.dtype, what
        assert torch.equal(got, expected), (what, got, expected)

    # reductions complex numbers do not have, and AVG of integers, fail up front
    errors = []
    for dtype in (torch.complex64, torch.complex128):
        for op in (ReduceOp.MIN, ReduceOp.MAX, ReduceOp.PRODUCT):
            x = torch.zeros(2, dtype=dtype)
            regex = f"does not support ReduceOp.{op.name} on complex"
            errors += [
                (
                    regex,
                    lambda x=x, op=op: pg.allreduce([x], opts_of(o.AllreduceOptions, reduceOp=op)),
                ),
                (regex, lambda x=x, op=op: pg.reduce([x], opts_of(o.ReduceOptions, reduceOp=op))),
                (
                    regex,
                    lambda x=x, op=op: pg.allreduce_coalesced(
                        [x, x.clone()], opts_of(o.AllreduceCoalescedOptions, reduceOp=op)
                    ),
                ),
            ]
    for dtype in (torch.bool, torch.uint8, torch.int32, torch.int64):
        x = torch.zeros(2, dtype=dtype)
        errors.append(
            (
                "Cannot use ReduceOp.AVG with non-floating-point dtype",
                lambda x=x: pg.allreduce([x], opts_of(o.AllreduceOptions, reduceOp=ReduceOp.AVG)),
            )
        )
    seq = pg._get_sequence_number_for_group()
    expect_errors(pg, errors)
    assert pg._get_sequence_number_for_group() == seq
    pg.shutdown()


@world_sizes(2, 3)
def test_dtype_matrix(world_size):
    """allreduce (SUM, MAX/MIN/PRODUCT, AVG where defined), broadcast, allgather and reduce for
    every supported dtype; complex MIN/MAX/PRODUCT and integer AVG fail with a clear error."""
    spawn(dtype_matrix, world_size, timeout=TIMEOUT)


# -- large messages ----------------------------------------------------------------------------
def _random(seed, *shape):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator)


def large_messages(ctx):
    pg, rank, size = make_pg(ctx), ctx.rank, ctx.world_size
    # allreduce of ~1M float32 (4 MB: the ring path), with a length that does not split evenly
    n = 1_000_003
    x = _random(rank, n)
    pg.allreduce([x]).wait()
    expected = sum(_random(r, n).double() for r in range(size)).float()
    torch.testing.assert_close(x, expected)
    # every rank holds the same bits
    root_copy = x.clone()
    pg.broadcast([root_copy], opts_of(o.BroadcastOptions, rootRank=0)).wait()
    assert torch.equal(root_copy, x)
    # MAX over the ring is exact
    y = _random(100 + rank, n)
    pg.allreduce([y], opts_of(o.AllreduceOptions, reduceOp=ReduceOp.MAX)).wait()
    assert torch.equal(y, torch.stack([_random(100 + r, n) for r in range(size)]).amax(0))

    # reduce_scatter: 3 x 1 MB inputs per rank
    m = 256 * 1024
    inputs = [_random(1000 * rank + j, m) for j in range(size)]
    out = torch.empty(m)
    pg.reduce_scatter([out], [inputs]).wait()
    torch.testing.assert_close(out, sum(_random(1000 * r + rank, m) for r in range(size)))
    # _reduce_scatter_base: a (size * 512, 512) input, a 1 MB output
    big = _random(2000 + rank, size * 512, 512)
    out = torch.empty(512, 512)
    pg._reduce_scatter_base(out, big).wait()
    expected = sum(_random(2000 + r, size * 512, 512) for r in range(size))
    torch.testing.assert_close(out, expected[rank * 512 : (rank + 1) * 512])

    # alltoall_base: 1 MB to each peer, then uneven splits
    rows = 64 * 1024
    send = _random(3000 + rank, size * rows, 4)
    recv = torch.empty(size * rows, 4)
    pg.alltoall_base(recv, send, [], []).wait()
    expected = torch.cat(
        [_random(3000 + r, size * rows, 4)[rank * rows : (rank + 1) * rows] for r in range(size)]
    )
    assert torch.equal(recv, expected)
    splits = [rows * (j + 1) for j in range(size)]  # rank i sends (j + 1) * rows rows to rank j
    send = _random(4000 + rank, sum(splits), 2)
    recv = torch.empty(size * splits[rank], 2)
    pg.alltoall_base(recv, send, [splits[rank]] * size, splits).wait()
    start = sum(splits[:rank])
    expected = torch.cat(
        [_random(4000 + r, sum(splits), 2)[start : start + splits[rank]] for r in range(size)]
    )
    assert torch.equal(recv, expected)

    # allgather of 2 MB per rank, into a list and into one tensor
    piece = _random(5000 + rank, 512 * 1024)
    outs = [torch.empty(512 * 1024) for _ in range(size)]
    pg.allgather([outs], [piece]).wait()
    for r in range(size):
        assert torch.equal(outs[r], _random(5000 + r, 512 * 1024))
    flat = torch.empty(size * 512 * 1024)
    pg._allgather_base(flat, piece).wait()
    assert torch.equal(flat, torch.cat(outs))

    # reduce of 4 MB onto the last rank
    z = _random(6000 + rank, n)
    pg.reduce([z], opts_of(o.ReduceOptions, rootRank=size - 1)).wait()
    if rank == size - 1:
        expected = sum(_random(6000 + r, n).double() for r in range(size)).float()
        torch.testing.assert_close(z, expected)
    else:
        assert torch.equal(z, _random(6000 + rank, n))
    pg.shutdown()


def test_large_messages():
    spawn(large_messages, 3, timeout=TIMEOUT)


# -- barrier -----------------------------------------------------------------------------------
def barrier_implies_wait(ctx, threads, shape):
    pg, size = make_pg(ctx, threads=threads), ctx.world_size
    for _ in range(10):  # the race this catches is timing-dependent: several rounds
        tensors = [torch.full(shape, float(i)) for i in range(16)]
        for tensor in tensors:
            pg.allreduce(tensor)  # the handle is dropped on purpose
        pg.barrier().get_future().wait()
        for i, tensor in enumerate(tensors):
            assert torch.equal(tensor, torch.full(shape, float(i * size))), i
    pg.shutdown()


@pytest.mark.parametrize(
    ("threads", "shape"),
    [(2, (100, 100)), (8, (10,)), (8, (300, 300))],
    ids=["seed", "threads8-small", "threads8-ring"],
)
def test_barrier_implies_wait(threads, shape):
    """A barrier completes only after the collectives issued before it have completed."""
    spawn(barrier_implies_wait, 3, args=(threads, shape), timeout=TIMEOUT)


# -- stores and rendezvous ---------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["file", "tcp"])
def test_default_store_timeout(scheme, tmp_path):
    """A store made by rendezvous with ``timeout=1s`` gives up on a missing key after ~1 s."""
    url = f"file://{tmp_path / 'store'}" if scheme == "file" else "tcp://127.0.0.1:0"
    store, rank, world_size = next(
        pyc10d.rendezvous(url, rank=0, world_size=1, timeout=timedelta(seconds=1))
    )
    assert (rank, world_size) == (0, 1)
    options = ProcessGroup.Options()
    options._timeout = timedelta(seconds=1)
    pg = ProcessGroup(store, rank, world_size, options)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"(?i)timeout"):
        store.get("nonexistent key")
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 3, elapsed
    # the group over that store works
    x = torch.tensor([3.0])
    pg.allreduce([x]).wait()
    pg.barrier().wait()
    assert x.item() == 3.0
    pg.shutdown()


def test_tcp_init():
    store, rank, world_size = next(pyc10d.rendezvous("tcp://127.0.0.1:0", rank=0, world_size=1))
    assert (rank, world_size) == (0, 1)
    assert store.port != 0  # a port was assigned


def tcp_group(ctx):
    torch.set_num_threads(1)
    url = f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    store, rank, size = next(
        pyc10d.rendezvous(url, ctx.rank, ctx.world_size, timeout=timedelta(seconds=30))
    )
    assert (rank, size) == (ctx.rank, ctx.world_size)
    options = ProcessGroup.Options()
    options._timeout = timedelta(seconds=30)
    pg = ProcessGroup(store, rank, size, options)
    x = torch.tensor([rank + 1.0])
    pg.allreduce([x]).wait()
    outs = [torch.zeros(1) for _ in range(size)]
    pg.allgather([outs], [torch.tensor([float(rank)])]).wait()
    pg.barrier().wait()
    pg.shutdown()
    return x.item(), [t.item() for t in outs]


@world_sizes(2, 3)
def test_tcp_init_group(world_size):
    """A group over the TCPStore that ``rendezvous('tcp://...')`` makes (rank 0 hosts it)."""
    results = spawn(tcp_group, world_size, timeout=TIMEOUT)
    expected = (world_size * (world_size + 1) / 2, [float(r) for r in range(world_size)])
    assert results == [expected] * world_size
