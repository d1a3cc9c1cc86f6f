"""Collectives over a :class:`~pyc10d.transport.shm.arena.ShmArena` (every rank on one host).

Data goes through the arena's staging slots in rounds of at most ``slot_bytes`` per rank: a rank
copies its part into its own slot and posts the round, then reads what it needs straight from
its peers' slots (all mapped) into its output, and releases the round. Double-buffered slots let
a rank post round R+1 while slow peers still read round R.

Large allreduces are slice-parallel: in each round every rank reduces its own 1/size slice of the
chunk from all slots (in rank order, so every rank ends with the same bits), publishes it in its
slot, and then copies the other ranks' reduced slices: reduce-scatter + allgather with no
messages. Small ones skip the second phase: every rank reduces the whole chunk itself.
Reductions combine the slots in rank order with :func:`.reduction.combine` (half-precision sums
over three or more ranks accumulate in float32 and round once).

Every round is symmetric, rooted collectives included: every rank claims its slot, posts the
round with its signature (operation, reduce op, root, dtype, count) and waits for every peer's
post. So ranks that run different collectives (or disagree on the root) all raise, naming both
sides, and a rank that gives up on a collective cannot leave another with a result (see
:mod:`pyc10d.transport.shm.arena`); every collective ends with :meth:`ShmArena.finish`. An empty
collective still runs one round, to compare signatures.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch

from ..core.errors import DistBackendError
from ..core.tags import Signature, refusal, signature
from ..core.tensor_bytes import flat_contiguous
from ..core.timeouts import Deadline
from ..transport.shm.arena import ShmArena, sizes_header_bytes
from .reduction import combine

SLICE_MIN_BYTES = 32 * 1024  # from this chunk size allreduce splits the reduction among ranks


def _output_view(tensor: torch.Tensor) -> torch.Tensor:
    """An output ``tensor`` as a 1-D view of its memory (itself when already 1-D)."""
    return tensor if tensor.dim() == 1 else tensor.view(-1)


def _elements_per_round(arena: ShmArena, dtype: torch.dtype, parts: int = 1) -> int:
    """How many elements of each of ``parts`` pieces fit one round of a slot."""
    return max(1, arena.slot_bytes // (dtype.itemsize * parts))


def _starts(count: int, step: int) -> range:
    """Where each round's elements start: at least one round, even for nothing."""
    return range(0, max(count, 1), step)


def _bounds(count: int, parts: int, index: int) -> tuple[int, int]:
    """Elements ``[lo, hi)`` of part ``index`` when ``count`` are split into ``parts``."""
    return count * index // parts, count * (index + 1) // parts


def allreduce(arena: ShmArena, flat: torch.Tensor, op: object, deadline: Deadline) -> None:
    """Reduce the contiguous 1-D ``flat`` across the group in place."""
    arena.expect(signature("allreduce", flat.dtype, flat.numel(), op))
    step = _elements_per_round(arena, flat.dtype)
    if flat.numel() <= step:
        _allreduce_round(arena, flat, op, deadline)
    else:
        for start in range(0, flat.numel(), step):
            _allreduce_round(arena, flat[start : start + step], op, deadline)
    arena.finish()


def _allreduce_round(arena: ShmArena, chunk: torch.Tensor, op: object, deadline: Deadline) -> None:
    """One round of :func:`allreduce`: ``chunk`` fits a slot."""
    rank, size, count, dtype = arena.rank, arena.size, chunk.numel(), chunk.dtype
    round_ = arena.start_round(deadline, "allreduce")
    parts = arena.views(round_, dtype, count)
    parts[rank].copy_(chunk)
    arena.post(round_)
    arena.wait_posted(round_, arena.peers, deadline, "allreduce")
    if count * dtype.itemsize < SLICE_MIN_BYTES or count < size:
        combine(op, chunk, parts)
    else:
        lo, hi = _bounds(count, size, rank)
        combine(op, chunk[lo:hi], [part[lo:hi] for part in parts])
        parts[rank][lo:hi].copy_(chunk[lo:hi])
        arena.post_reduced(round_)
        arena.wait_reduced(round_, arena.peers, deadline, "allreduce")
        for owner in arena.peers:
            lo, hi = _bounds(count, size, owner)
            chunk[lo:hi].copy_(parts[owner][lo:hi])
    arena.release(round_)


def reduce(arena: ShmArena, flat: torch.Tensor, op: object, root: int, deadline: Deadline) -> None:
    """Reduce ``flat`` onto ``root`` in place there (the others' ``flat`` is left as it was)."""
    dtype = flat.dtype
    arena.expect(signature("reduce", dtype, flat.numel(), op, root))
    step = _elements_per_round(arena, dtype)
    for start in _starts(flat.numel(), step):
        chunk = flat[start : start + step]
        count = chunk.numel()
        round_ = arena.start_round(deadline, "reduce")
        arena.typed(arena.rank, round_, dtype)[:count].copy_(chunk)
        arena.post(round_)
        arena.wait_posted(round_, arena.peers, deadline, "reduce")
        if arena.rank == root:
            slots = [arena.typed(owner, round_, dtype)[:count] for owner in range(arena.size)]
            combine(op, chunk, slots)
        arena.release(round_)
    arena.finish()


def broadcast(arena: ShmArena, flat: torch.Tensor, root: int, deadline: Deadline) -> None:
    """Copy ``root``'s contiguous ``flat`` into every rank's ``flat``."""
    arena.expect(signature("broadcast", flat.dtype, flat.numel(), root=root))
    data = flat.view(-1).view(torch.uint8)
    step = arena.slot_bytes
    for start in _starts(data.numel(), step):
        chunk = data[start : start + step]
        round_ = arena.start_round(deadline, "broadcast")
        if arena.rank == root:
            arena.slot(root, round_)[: chunk.numel()].copy_(chunk)
        arena.post(round_)
        arena.wait_posted(round_, arena.peers, deadline, "broadcast")
        if arena.rank != root:
            chunk.copy_(arena.slot(root, round_)[: chunk.numel()])
        arena.release(round_)
    arena.finish()


def allgather(
    arena: ShmArena, send: torch.Tensor, recv: Sequence[torch.Tensor], deadline: Deadline
) -> None:
    """Every rank's contiguous ``send`` lands in ``recv[rank]`` on every rank."""
    dtype = send.dtype
    arena.expect(signature("allgather", dtype, send.numel()))
    step = _elements_per_round(arena, dtype)
    recv[arena.rank].copy_(send.view_as(recv[arena.rank]))
    flat_recv = [_output_view(r) for r in recv]
    send = flat_contiguous(send)
    for start in _starts(send.numel(), step):
        count = min(step, send.numel() - start)
        round_ = arena.start_round(deadline, "allgather")
        arena.typed(arena.rank, round_, dtype)[:count].copy_(send[start : start + count])
        arena.post(round_)
        arena.wait_posted(round_, arena.peers, deadline, "allgather")
        for owner in arena.peers:
            part = arena.typed(owner, round_, dtype)[:count]
            flat_recv[owner][start : start + count].copy_(part)
        arena.release(round_)
    arena.finish()


def _post_blocks(
    arena: ShmArena,
    blocks: Sequence[torch.Tensor],
    start: int,
    count: int,
    round_: int,
    deadline: Deadline,
    what: str,
) -> None:
    """Put elements ``[start, start + count)`` of every block side by side in this rank's slot,
    post the round and wait until every peer posted it too."""
    arena.claim(round_, deadline, what)
    mine = arena.typed(arena.rank, round_, blocks[0].dtype)
    for index, block in enumerate(blocks):
        mine[index * count : (index + 1) * count].copy_(block[start : start + count])
    arena.post(round_)
    arena.wait_posted(round_, arena.peers, deadline, what)


def reduce_scatter(
    arena: ShmArena,
    send: Sequence[torch.Tensor],
    recv: torch.Tensor,
    op: object,
    deadline: Deadline,
) -> None:
    """Rank r ends with ``send[r]`` of every rank reduced (in rank order) into ``recv``."""
    blocks = [flat_contiguous(s) for s in send]
    out = _output_view(recv)
    total, dtype, rank = out.numel(), recv.dtype, arena.rank
    arena.expect(signature("reduce_scatter", dtype, total, op))
    step = _elements_per_round(arena, dtype, arena.size)
    for start in _starts(total, step):
        count = min(step, total - start)
        round_ = arena.next_round()
        _post_blocks(arena, blocks, start, count, round_, deadline, "reduce_scatter")
        lo, hi = rank * count, (rank + 1) * count
        parts = [arena.typed(owner, round_, dtype)[lo:hi] for owner in range(arena.size)]
        combine(op, out[start : start + count], parts)
        arena.release(round_)
    arena.finish()


def alltoall(
    arena: ShmArena, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor], deadline: Deadline
) -> None:
    """``send[j]`` of rank i lands in ``recv[i]`` of rank j; blocks may differ in size.

    The first round also carries every rank's block sizes, those it sends and those it expects
    (ahead of the data in its slot), so that all ranks agree on how many rounds follow, and a
    block whose size its receiver does not expect is an error on every rank rather than a hang.
    """
    blocks = [flat_contiguous(s) for s in send]
    outs = [_output_view(r) for r in recv]
    rank, size = arena.rank, arena.size
    dtype = outs[rank].dtype
    arena.expect(signature("alltoall", dtype, size))  # as exchange.alltoall_signature
    outs[rank].copy_(blocks[rank])
    header = sizes_header_bytes(size)
    base = header // dtype.itemsize  # data starts after the sizes
    step = (arena.slot_bytes - header) // (dtype.itemsize * size)
    start, longest = 0, -1
    while longest < 0 or start < longest:
        round_ = arena.start_round(deadline, "alltoall")
        mine = arena.typed(rank, round_, dtype)
        if longest < 0:
            sizes = [b.numel() for b in blocks] + [o.numel() for o in outs]
            arena.head(rank, round_)[:] = array("q", sizes)
        for peer in arena.peers:
            count = min(step, blocks[peer].numel() - start)
            if count > 0:
                offset = base + peer * step
                mine[offset : offset + count].copy_(blocks[peer][start : start + count])
        arena.post(round_)
        arena.wait_posted(round_, arena.peers, deadline, "alltoall")
        if longest < 0:
            longest = _agreed_longest(arena, round_)
        for owner in arena.peers:
            count = min(step, outs[owner].numel() - start)
            if count > 0:
                offset = base + rank * step
                part = arena.typed(owner, round_, dtype)[offset : offset + count]
                outs[owner][start : start + count].copy_(part)
        arena.release(round_)
        start += step
    arena.finish()


def _agreed_longest(arena: ShmArena, round_: int) -> int:
    """The longest block any rank sends another (from the sizes posted in ``round_``); raises
    DistBackendError, the same on every rank, if a rank sends a block of another size than its
    receiver expects."""
    size = arena.size
    rows = [arena.head(owner, round_).tolist() for owner in range(size)]
    check_block_sizes([row[:size] for row in rows], [row[size:] for row in rows])
    return max((rows[q][p] for q in range(size) for p in range(size) if q != p), default=0)


def check_block_sizes(sends: Sequence[Sequence[int]], expects: Sequence[Sequence[int]]) -> None:
    """DistBackendError naming both ranks unless ``sends[q][p] == expects[p][q]`` for every pair
    of ranks (``sends[q][p]``: elements rank q sends rank p; ``expects[p][q]``: what rank p
    expects from rank q); every rank that checks the same sizes raises the same error."""
    size = len(sends)
    for q in range(size):
        for p in range(size):
            if q != p and sends[q][p] != expects[p][q]:
                raise DistBackendError(
                    f"rank {q} sends {sends[q][p]} elements to rank {p}, which expects "
                    f"{expects[p][q]} (the all-to-all block sizes of ranks {q} and {p} disagree)"
                )


def refuse(arena: ShmArena, sig: Signature, reason: bytes, deadline: Deadline) -> None:
    """Post a round of collective ``sig`` marked as refused, ``reason`` in this rank's slot: every
    peer raises when it sees it (:meth:`ShmArena.wait_posted`); this rank reads nothing."""
    arena.expect(refusal(sig))
    round_ = arena.start_round(deadline, sig.kind())
    arena.write_reason(round_, reason)
    arena.post(round_)
    arena.release(round_)


def barrier(arena: ShmArena, deadline: Deadline) -> None:
    """Return once every rank has entered the barrier."""
    arena.expect(BARRIER)
    round_ = arena.start_round(deadline, "barrier")  # claimed: peers may still read its signature
    arena.post(round_)
    arena.wait_posted(round_, arena.peers, deadline, "barrier")
    arena.release(round_)
    arena.finish()


BARRIER = signature("barrier", torch.uint8, 0)
