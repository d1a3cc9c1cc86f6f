"""Point-to-point messages (``dist.send``/``recv``, ``isend``/``irecv``, ``batch_isend_irecv``).

Two spawned runs per world size at most: the default group at world sizes 2 and 3, and a
subgroup that leaves out rank 0 (global ranks in, global ranks out; non-members warned).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist

import pyc10d as dist
from pyc10d.testing import spawn, world_sizes

TIMEOUT = 90
NOT_MEMBER = "does not belong to the given group"


def _init(ctx) -> None:
    dist.init_process_group(
        backend="gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )


def _argument_errors(rank: int, n: int) -> None:
    t = torch.zeros(2)
    with pytest.raises(ValueError, match="Invalid destination rank: destination rank should not"):
        dist.send(t, dst=rank)
    with pytest.raises(ValueError, match="Invalid destination rank"):
        dist.send(t, group_dst=rank)
    with pytest.raises(ValueError, match="specify both dst and group_dst"):
        dist.send(t, dst=0, group_dst=0)
    with pytest.raises(TypeError, match="Invalid function argument"):
        dist.isend([t], dst=(rank + 1) % n)
    with pytest.raises(ValueError, match="Invalid ``op``"):
        dist.P2POp(dist.send, t, 0)
    with pytest.raises(ValueError, match="Must specify dst"):
        dist.P2POp(dist.isend, t)
    with pytest.raises(ValueError, match="specify both src and group_src"):
        dist.P2POp(dist.irecv, t, peer=0, group_peer=0)
    with pytest.raises(ValueError, match="Invalid ``p2p_op_list``"):
        dist.batch_isend_irecv([])
    with pytest.raises(ValueError, match="Invalid ``p2p_op_list``"):
        dist.batch_isend_irecv([dist.P2POp(dist.isend, t, 0), "op"])


def p2p_default_group(ctx) -> list[int]:
    _init(ctx)
    rank, n = dist.get_rank(), dist.get_world_size()
    right, left = (rank + 1) % n, (rank - 1) % n
    _argument_errors(rank, n)

    # ring with send/recv: sends are buffered, so every rank may send first
    buf = torch.zeros(3)
    dist.send(torch.full((3,), float(rank)), right, tag=7)
    assert dist.recv(buf, left, tag=7) == left and buf.tolist() == [float(left)] * 3
    dist.send(torch.full((3,), rank + 0.5), group_dst=right)
    assert dist.recv(buf, group_src=left) == left and buf.tolist() == [left + 0.5] * 3
    c = torch.zeros(2, dtype=torch.complex64)
    dist.send(torch.tensor([rank, 1j * rank], dtype=torch.complex64), right)
    dist.recv(c, left)
    assert c.tolist() == [left, 1j * left]

    # isend/irecv: Works; tags keep two messages apart
    first, second = torch.zeros(1), torch.zeros(1)
    works = [
        dist.isend(torch.tensor([1.0 + rank]), right, tag=1),
        dist.isend(torch.tensor([2.0 + rank]), right, tag=2),
        dist.irecv(second, left, tag=2),
        dist.irecv(first, group_src=left, tag=1),
    ]
    assert all(isinstance(w, dist.Work) for w in works)
    for w in works:
        w.wait()
    assert (first.item(), second.item()) == (1.0 + left, 2.0 + left)

    # receive from any rank: recv returns the sender, irecv's Work knows it (tags of their own,
    # so that the batch below, which senders may start early, cannot match)
    senders = []
    if rank == 0:
        for _ in range(n - 1):
            sender = dist.recv(buf, tag=9)
            assert buf.tolist() == [10.0 * sender] * 3
            senders.append(sender)
        for _ in range(n - 1):
            work = dist.irecv(buf, tag=3)
            work.wait()
            assert buf.tolist() == [20.0 * work.source_rank()] * 3
            senders.append(work.source_rank())
    else:
        dist.send(torch.full((3,), 10.0 * rank), 0, tag=9)
        dist.isend(torch.full((3,), 20.0 * rank), 0, tag=3).wait()

    # batch_isend_irecv: a ring, with pyc10d's and torch's isend/irecv, global and group peers
    got = [torch.zeros(2), torch.zeros(2)]
    ops = [
        dist.P2POp(dist.irecv, got[0], left),
        dist.P2POp(tdist.isend, torch.full((2,), float(rank)), right),
        dist.P2POp(dist.isend, torch.full((2,), -float(rank)), group_peer=right, tag=5),
        dist.P2POp(tdist.irecv, got[1], group_peer=left, tag=5),
    ]
    assert ops[1].op is dist.isend and ops[2].peer == right and ops[0].group is dist.group.WORLD
    assert repr(ops[0]).startswith(f"P2POp(irecv pg=0, group_src={left}, group_dst={rank},")
    works = dist.batch_isend_irecv(ops)
    assert len(works) == 4
    for w in works:
        w.wait()
    assert got[0].tolist() == [float(left)] * 2 and got[1].tolist() == [-float(left)] * 2

    dist.barrier()
    dist.destroy_process_group()
    return sorted(senders)


@world_sizes(2, 3)
def test_p2p_on_the_default_group(world_size):
    results = spawn(p2p_default_group, world_size, timeout=TIMEOUT)
    others = list(range(1, world_size))
    assert results == [sorted(others * 2)] + [[]] * (world_size - 1)


def p2p_subgroup(ctx) -> int:
    _init(ctx)
    rank = dist.get_rank()
    g = dist.new_group([1, 2])
    t = torch.zeros(2)
    if rank == 0:
        assert g is dist.GroupMember.NON_GROUP_MEMBER
        with pytest.warns(UserWarning, match=NOT_MEMBER):
            assert dist.send(t, dst=1, group=g) is None
        with pytest.warns(UserWarning, match=NOT_MEMBER):
            assert dist.recv(t, src=1, group=g) == -1
        with pytest.warns(UserWarning, match=NOT_MEMBER):
            assert dist.recv(t, group=g) == -1
        with pytest.warns(UserWarning, match=NOT_MEMBER):
            assert dist.isend(t, group_dst=0, group=g) is None
        with pytest.warns(UserWarning, match=NOT_MEMBER):
            assert dist.irecv(t, group=g) is None
        op = dist.P2POp(dist.isend, t, 1, group=g)
        with pytest.warns(UserWarning, match=NOT_MEMBER):
            assert dist.batch_isend_irecv([op]) == []
        result = 0
    else:
        other = 3 - rank  # global ranks 1 and 2 are group ranks 0 and 1
        dist.send(torch.full((2,), float(rank)), dst=other, group=g)
        assert dist.recv(t, src=other, group=g) == other and t.tolist() == [float(other)] * 2
        dist.send(torch.full((2,), rank + 0.5), group=g, group_dst=other - 1)
        assert dist.recv(t, group=g, group_src=other - 1) == other
        assert t.tolist() == [other + 0.5] * 2
        with pytest.raises(ValueError, match="Invalid destination rank"):
            dist.send(t, dst=rank, group=g)
        with pytest.raises(ValueError, match="Global rank 0 is not part of group"):
            dist.send(t, dst=0, group=g)
        # any source: the sender comes back as a global rank
        if rank == 1:
            result = dist.recv(t, group=g)
            assert t.tolist() == [7.0, 7.0]
        else:
            dist.isend(torch.full((2,), 7.0), dst=1, group=g).wait()
            result = 0
        got = torch.zeros(2)
        ops = [
            dist.P2POp(dist.isend, torch.full((2,), 3.0 * rank), other, group=g),
            dist.P2POp(dist.irecv, got, group=g, group_peer=other - 1),
        ]
        assert ops[1].peer == other and ops[0].group_peer == other - 1
        for w in dist.batch_isend_irecv(ops):
            w.wait()
        assert got.tolist() == [3.0 * other] * 2
        with pytest.raises(ValueError, match="All ops need to use the same group"):
            dist.batch_isend_irecv([ops[0], dist.P2POp(dist.irecv, got, other)])
    dist.barrier()
    dist.destroy_process_group()
    return result


def test_p2p_on_a_subgroup_without_rank_0():
    assert spawn(p2p_subgroup, 3, timeout=TIMEOUT) == [0, 2, 0]
