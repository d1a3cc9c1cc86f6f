"""Object collectives: broadcast/all_gather/gather/scatter of objects and send/recv_object_list.

One spawned run per world size (2 and 3): the default group, then (world size 3) the subgroup of
global ranks 1 and 2, where global and group ranks differ and rank 0 is a non-member. Objects
are instances of a module-level class, and one of each call's objects is large (about 20 MB).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import pyc10d as dist
from pyc10d.testing import spawn, world_sizes

TIMEOUT = 90
BIG_BYTES = 20 * 1024 * 1024
NOT_MEMBER = "does not belong to the given group"


class Payload:
    """A custom picklable class (module level, so every rank can unpickle it)."""

    def __init__(self, rank: int, note: str = "", blob: bytes = b"") -> None:
        self.rank = rank
        self.note = note
        self.blob = blob
        self.tensor = torch.arange(3) + rank

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Payload)
            and (self.rank, self.note, self.blob) == (other.rank, other.note, other.blob)
            and torch.equal(self.tensor, other.tensor)
        )


def _big(rank: int) -> Payload:
    """A ~20 MB object whose bytes depend on ``rank``."""
    return Payload(rank, "big", bytes([rank % 256]) * BIG_BYTES)


def _check_errors(rank: int, n: int) -> None:
    """Argument errors, raised before anything is sent (so the group stays in step)."""
    with pytest.raises(ValueError, match=r"must (NOT )?be specified on (non-)?destination"):
        dist.gather_object(1, None if rank == 0 else [None] * n, dst=0)
    with pytest.raises(ValueError, match="at least 1"):
        dist.scatter_object_list([], [1] * n)
    with pytest.raises(ValueError, match="Invalid destination rank"):
        dist.send_object_list([1], dst=rank)
    with pytest.raises(ValueError, match="Invalid source rank"):
        dist.recv_object_list([None], group_src=rank)
    with pytest.raises(ValueError, match="specify both"):
        dist.broadcast_object_list([None], src=0, group_src=0)


def _default_group(rank: int, n: int) -> None:
    # all_gather_object: the last rank's object is the big one
    objs = [None] * n
    mine = _big(rank) if rank == n - 1 else Payload(rank, f"from {rank}")
    dist.all_gather_object(objs, mine)
    assert objs == [_big(r) if r == n - 1 else Payload(r, f"from {r}") for r in range(n)]

    # gather_object onto the last rank (a global rank other than the default 0)
    gathered = [None] * n if rank == n - 1 else None
    dist.gather_object(_big(rank) if rank == 0 else Payload(rank), gathered, dst=n - 1)
    if rank == n - 1:
        assert gathered == [_big(0)] + [Payload(r) for r in range(1, n)]
    dist.gather_object({"rank": rank}, [None] * n if rank == 0 else None)  # default dst 0

    # broadcast_object_list from rank 1; the source's list is left as it was
    sent = [Payload(1, "a"), _big(1), {"k": (1, 2)}, None]
    objs = list(sent) if rank == 1 else [None] * 4
    dist.broadcast_object_list(objs, src=1)
    assert objs == sent
    objs = [rank]
    dist.broadcast_object_list(objs)  # default source: global rank 0
    assert objs == [0]

    # scatter_object_list from rank 0: rank 1 gets the big one
    inputs = [_big(r) if r == 1 else Payload(r, "scattered") for r in range(n)]
    out = [None, "untouched"]
    dist.scatter_object_list(out, inputs if rank == 0 else None, src=0)
    assert out == [inputs[rank], "untouched"]

    # send/recv_object_list: 0 -> 1 with a named source
    if rank == 0:
        dist.send_object_list([Payload(0, "p2p"), _big(0)], dst=1)
    elif rank == 1:
        objs = [None, None]
        assert dist.recv_object_list(objs, src=0) == 0
        assert objs == [Payload(0, "p2p"), _big(0)]

    # from any source: every other rank sends to rank 0, which learns who sent what
    if rank == 0:
        senders = []
        for _ in range(n - 1):
            objs = [None, None]
            sender = dist.recv_object_list(objs)
            assert objs == [Payload(sender, "any"), sender * 10]
            senders.append(sender)
        assert sorted(senders) == list(range(1, n))
    else:
        dist.send_object_list([Payload(rank, "any"), rank * 10], dst=0, use_batch=True)


def _subgroup(rank: int) -> None:
    """World size 3: the group of global ranks 1 and 2 (group ranks 0 and 1)."""
    sub = dist.new_group([1, 2])
    if rank == 0:
        lst = ["keep"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dist.all_gather_object(lst, 1, group=sub)
            dist.gather_object(1, None, dst=1, group=sub)
            dist.broadcast_object_list(lst, src=1, group=sub)
            dist.scatter_object_list(lst, None, src=1, group=sub)
            dist.send_object_list(lst, dst=1, group=sub)
            assert dist.recv_object_list(lst, group=sub) == -1
        assert lst == ["keep"]
        assert len(caught) == 6 and all(NOT_MEMBER in str(w.message) for w in caught)
        return
    other = 3 - rank  # the other member's global rank
    objs = [None, None]
    dist.all_gather_object(objs, _big(rank) if rank == 2 else Payload(rank), group=sub)
    assert objs == [Payload(1), _big(2)]

    gathered = [None, None] if rank == 2 else None
    dist.gather_object(Payload(rank, "g"), gathered, dst=2, group=sub)  # dst: global rank 2
    if rank == 2:
        assert gathered == [Payload(1, "g"), Payload(2, "g")]
    gathered = [None, None] if rank == 1 else None
    dist.gather_object(_big(rank), gathered, group=sub, group_dst=0)
    if rank == 1:
        assert gathered == [_big(1), _big(2)]

    objs = [_big(2), Payload(2, "b")] if rank == 2 else [None, None]
    dist.broadcast_object_list(objs, src=2, group=sub)
    assert objs == [_big(2), Payload(2, "b")]
    objs = [Payload(rank, "gs")]
    dist.broadcast_object_list(objs, group=sub, group_src=0)  # group rank 0 = global rank 1
    assert objs == [Payload(1, "gs")]

    out = [None]
    inputs = [Payload(1, "s"), _big(2)] if rank == 2 else None
    dist.scatter_object_list(out, inputs, group=sub, group_src=1)
    assert out == [[Payload(1, "s"), _big(2)][rank - 1]]

    if rank == 1:
        dist.send_object_list([Payload(1, "sub"), _big(1)], group=sub, group_dst=1)
        objs = [None]
        assert dist.recv_object_list(objs, src=other, group=sub) == 2
        assert objs == [Payload(2, "back")]
    else:
        objs = [None, None]
        assert dist.recv_object_list(objs, group=sub) == 1  # any source: the global rank
        assert objs == [Payload(1, "sub"), _big(1)]
        dist.send_object_list([Payload(2, "back")], dst=other, group=sub)


def object_collectives(ctx) -> str:
    dist.init_process_group(
        backend="gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    rank, n = dist.get_rank(), dist.get_world_size()
    _check_errors(rank, n)
    _default_group(rank, n)
    if n == 3:
        _subgroup(rank)
    dist.destroy_process_group()
    return "ok"


@world_sizes(2, 3)
def test_object_collectives(world_size):
    assert spawn(object_collectives, world_size, timeout=TIMEOUT) == ["ok"] * world_size


def test_not_initialized():
    with pytest.raises(ValueError, match="has not been initialized"):
        dist.all_gather_object([None], 1)
