"""Collectives over a :class:`~pyc10d.transport.shm.arena.ShmArena` (every rank on one host).

Data goes through the arena's staging slots in rounds of at most ``slot_bytes`` per rank: a rank
copies its part into its own slot and posts the round, then reads what it needs straight from
its peers' slots (all mapped) into its output, and releases the round. Double-buffered slots let
a rank post round R+1 while slow peers still read round R.

Large allreduces are slice-parallel: in each round every rank stages only the slices its peers
reduce, reduces its own 1/size slice of the chunk (in rank order, so every rank ends with the
same bits) straight into its tensor, its own part read in place there, publishes the result in
its slot, and then copies the other ranks' reduced slices: reduce-scatter + allgather with no
messages, each byte copied once into shared memory and once out. Small ones skip the second
phase: every rank reduces the whole chunk itself. Reductions combine the parts in rank order
with :func:`.reduction.combine` (half-precision sums over three or more ranks accumulate in
float32 and round once). Reduce and reduce-scatter likewise read a rank's own part in place.

All ranks copy at once, so a large collective runs with at most the rank's share of the cores as
torch threads (:func:`capped`); a rank copies its own block of an allgather or all-to-all while
its peers are still posting.

Every round is symmetric, rooted collectives included: every rank claims its slot, posts the
round with its signature (operation, reduce op, root, dtype, count) and waits for every peer's
post. So ranks that run different collectives (or disagree on the root) all raise, naming both
sides, and a rank that gives up on a collective cannot leave another with a result (see
:mod:`pyc10d.transport.shm.arena`); every collective ends with :meth:`ShmArena.finish`. An empty
collective still runs one round, to compare signatures.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence

import torch

from ..core.errors import DistBackendError
from ..core.tags import Signature, refusal, signature
from ..core.tensor_bytes import flat_contiguous
from ..core.timeouts import Deadline
from ..transport.shm.arena import ShmArena, sizes_header_bytes
from .reduction import accumulates_wide, combine

SLICE_MIN_BYTES = 32 * 1024  # from this chunk size allreduce splits the reduction among ranks
CAP_MIN_BYTES = 64 * 1024  # from this size a collective caps torch's threads (see capped)


def capped(arena: ShmArena, nbytes: int, run: Callable[..., None], *args: object) -> None:
    """``run(*args)``, a collective moving ``nbytes`` per rank, with at most ``arena.threads``
    torch intra-op threads from CAP_MIN_BYTES on.

    Every rank of the group copies and reduces at once on one host: more threads than the cores
    each rank has only make them take turns (and a thread left spinning in torch's pool steals
    the core a peer needs), which costs far more than it parallelises.
    """
    current = torch.get_num_threads() if nbytes >= CAP_MIN_BYTES else 0
    if current <= arena.threads:
        run(*args)
        return
    torch.set_num_threads(arena.threads)
    try:
        run(*args)
    finally:
        torch.set_num_threads(current)


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
    nbytes = flat.numel() * flat.dtype.itemsize
    if flat.numel() <= step and nbytes < SLICE_MIN_BYTES:
        _allreduce_whole(arena, flat, op, deadline)
    else:
        capped(arena, nbytes, _allreduce_rounds, arena, flat, op, step, deadline)
    arena.finish()


def _allreduce_rounds(
    arena: ShmArena, flat: torch.Tensor, op: object, step: int, deadline: Deadline
) -> None:
    """:func:`allreduce` in rounds of ``step`` elements."""
    for start in range(0, flat.numel(), step):
        chunk = flat[start : start + step]
        if chunk.numel() * chunk.dtype.itemsize < SLICE_MIN_BYTES or chunk.numel() < arena.size:
            _allreduce_whole(arena, chunk, op, deadline)
        else:
            _allreduce_sliced(arena, chunk, op, deadline)


def _allreduce_whole(arena: ShmArena, chunk: torch.Tensor, op: object, deadline: Deadline) -> None:
    """One round of a small :func:`allreduce`: every rank reduces all of ``chunk`` itself."""
    round_ = arena.start_round(deadline, "allreduce")
    parts = arena.views(round_, chunk.dtype, chunk.numel())
    parts[arena.rank].copy_(chunk)
    arena.post(round_)
    arena.wait_posted(round_, arena.peers, deadline, "allreduce")
    combine(op, chunk, parts)
    arena.release(round_)


def _allreduce_sliced(arena: ShmArena, chunk: torch.Tensor, op: object, deadline: Deadline) -> None:
    """One round of a large :func:`allreduce` (``chunk`` fits a slot): rank r reduces slice r.

    A rank stages only the slices its peers reduce; it reduces its own slice straight into
    ``chunk`` (its own part read in place there, when :func:`.reduction.combine` allows), then
    puts the result in its slot, where the peers copy it from.
    """
    rank, size, count, dtype = arena.rank, arena.size, chunk.numel(), chunk.dtype
    round_ = arena.start_round(deadline, "allreduce")
    slots = arena.views(round_, dtype, count)
    mine = slots[rank]
    lo, hi = _bounds(count, size, rank)
    in_place = rank < 2 or accumulates_wide(op, dtype, size)  # combine may write over its part
    if lo > 0:
        mine[:lo].copy_(chunk[:lo])
    if hi < count:
        mine[hi:].copy_(chunk[hi:])
    if not in_place:
        mine[lo:hi].copy_(chunk[lo:hi])
    arena.post(round_)
    arena.wait_posted(round_, arena.peers, deadline, "allreduce")
    own = chunk[lo:hi]
    parts = [own if owner == rank and in_place else slot[lo:hi] for owner, slot in enumerate(slots)]
    combine(op, own, parts)
    mine[lo:hi].copy_(own)
    arena.post_reduced(round_)
    arena.wait_reduced(round_, arena.peers, deadline, "allreduce")
    for owner in arena.peers:
        lo, hi = _bounds(count, size, owner)
        chunk[lo:hi].copy_(slots[owner][lo:hi])
    arena.release(round_)


def reduce(arena: ShmArena, flat: torch.Tensor, op: object, root: int, deadline: Deadline) -> None:
    """Reduce ``flat`` onto ``root`` in place there (the others' ``flat`` is left as it was)."""
    arena.expect(signature("reduce", flat.dtype, flat.numel(), op, root))
    nbytes = flat.numel() * flat.dtype.itemsize
    capped(arena, nbytes, _reduce_rounds, arena, flat, op, root, deadline)
    arena.finish()


def _reduce_rounds(
    arena: ShmArena, flat: torch.Tensor, op: object, root: int, deadline: Deadline
) -> None:
    """:func:`reduce`, a slot at a time (the root reads its own part in place when it can)."""
    dtype, rank = flat.dtype, arena.rank
    in_place = root < 2 or accumulates_wide(op, dtype, arena.size)  # see reduction.combine
    step = _elements_per_round(arena, dtype)
    for start in _starts(flat.numel(), step):
        chunk = flat[start : start + step]
        count = chunk.numel()
        round_ = arena.start_round(deadline, "reduce")
        if rank != root or not in_place:
            arena.typed(rank, round_, dtype)[:count].copy_(chunk)
        arena.post(round_)
        arena.wait_posted(round_, arena.peers, deadline, "reduce")
        if rank == root:
            slots = [arena.typed(owner, round_, dtype)[:count] for owner in range(arena.size)]
            if in_place:
                slots[rank] = chunk
            combine(op, chunk, slots)
        arena.release(round_)


def broadcast(arena: ShmArena, flat: torch.Tensor, root: int, deadline: Deadline) -> None:
    """Copy ``root``'s contiguous ``flat`` into every rank's ``flat``."""
    arena.expect(signature("broadcast", flat.dtype, flat.numel(), root=root))
    data = flat.view(-1).view(torch.uint8)
    capped(arena, data.numel(), _broadcast_rounds, arena, data, root, deadline)
    arena.finish()


def _broadcast_rounds(arena: ShmArena, data: torch.Tensor, root: int, deadline: Deadline) -> None:
    """:func:`broadcast` of the bytes ``data``, a slot at a time."""
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


def allgather(
    arena: ShmArena, send: torch.Tensor, recv: Sequence[torch.Tensor], deadline: Deadline
) -> None:
    """Every rank's contiguous ``send`` lands in ``recv[rank]`` on every rank."""
    arena.expect(signature("allgather", send.dtype, send.numel()))
    nbytes = send.numel() * send.dtype.itemsize * arena.size
    capped(arena, nbytes, _allgather_rounds, arena, send, recv, deadline)
    arena.finish()


def _allgather_rounds(
    arena: ShmArena, send: torch.Tensor, recv: Sequence[torch.Tensor], deadline: Deadline
) -> None:
    """:func:`allgather`, a slot at a time; this rank's own block is copied while its peers
    still post their first round."""
    dtype, rank = send.dtype, arena.rank
    step = _elements_per_round(arena, dtype)
    flat_recv = [_output_view(r) for r in recv]
    flat_send = flat_contiguous(send)
    for start in _starts(flat_send.numel(), step):
        count = min(step, flat_send.numel() - start)
        round_ = arena.start_round(deadline, "allgather")
        arena.typed(rank, round_, dtype)[:count].copy_(flat_send[start : start + count])
        arena.post(round_)
        if start == 0:
            recv[rank].copy_(send.view_as(recv[rank]))
        arena.wait_posted(round_, arena.peers, deadline, "allgather")
        for owner in arena.peers:
            part = arena.typed(owner, round_, dtype)[:count]
            flat_recv[owner][start : start + count].copy_(part)
        arena.release(round_)


def reduce_scatter(
    arena: ShmArena,
    send: Sequence[torch.Tensor],
    recv: torch.Tensor,
    op: object,
    deadline: Deadline,
) -> None:
    """Rank r ends with ``send[r]`` of every rank reduced (in rank order) into ``recv``."""
    out = _output_view(recv)
    arena.expect(signature("reduce_scatter", recv.dtype, out.numel(), op))
    nbytes = out.numel() * recv.dtype.itemsize * arena.size
    capped(arena, nbytes, _reduce_scatter_rounds, arena, send, out, op, deadline)
    arena.finish()


def _reduce_scatter_rounds(
    arena: ShmArena, send: Sequence[torch.Tensor], out: torch.Tensor, op: object, deadline: Deadline
) -> None:
    """:func:`reduce_scatter` into the 1-D ``out``: in each round a rank stages the pieces of its
    peers' blocks side by side in its slot and reduces its own block's piece, reading its own
    part in place when :func:`.reduction.combine` allows it."""
    blocks = [flat_contiguous(s) for s in send]
    total, dtype, rank = out.numel(), out.dtype, arena.rank
    own = blocks[rank]
    in_place = (rank < 2 or accumulates_wide(op, dtype, arena.size)) and _same_or_apart(out, own)
    step = _elements_per_round(arena, dtype, arena.size)
    for start in _starts(total, step):
        count = min(step, total - start)
        round_ = arena.start_round(deadline, "reduce_scatter")
        mine = arena.typed(rank, round_, dtype)
        for index, block in enumerate(blocks):
            if index != rank or not in_place:
                mine[index * count : (index + 1) * count].copy_(block[start : start + count])
        arena.post(round_)
        arena.wait_posted(round_, arena.peers, deadline, "reduce_scatter")
        lo, hi = rank * count, (rank + 1) * count
        parts = [arena.typed(owner, round_, dtype)[lo:hi] for owner in range(arena.size)]
        if in_place:
            parts[rank] = own[start : start + count]
        combine(op, out[start : start + count], parts)
        arena.release(round_)


def _same_or_apart(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True if the contiguous 1-D ``a`` and ``b`` are the very same elements or share none."""
    if a.numel() == 0 or b.numel() == 0:
        return True
    a_start, b_start = a.data_ptr(), b.data_ptr()
    if a_start == b_start and a.numel() == b.numel() and a.dtype == b.dtype:
        return True
    return a_start + a.numel() * a.element_size() <= b_start or (
        b_start + b.numel() * b.element_size() <= a_start
    )


def alltoall(
    arena: ShmArena, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor], deadline: Deadline
) -> None:
    """``send[j]`` of rank i lands in ``recv[i]`` of rank j; blocks may differ in size.

    The first round also carries every rank's block sizes, those it sends and those it expects
    (ahead of the data in its slot), so that all ranks agree on how many rounds follow, and a
    block whose size its receiver does not expect is an error on every rank rather than a hang.
    """
    arena.expect(signature("alltoall", recv[arena.rank].dtype, arena.size))  # as exchange's
    nbytes = sum(r.numel() for r in recv) * recv[arena.rank].dtype.itemsize
    capped(arena, nbytes, _alltoall_rounds, arena, send, recv, deadline)
    arena.finish()


def _alltoall_rounds(
    arena: ShmArena, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor], deadline: Deadline
) -> None:
    """:func:`alltoall`, a slot at a time; this rank's own block is copied while its peers
    still post their first round."""
    blocks = [flat_contiguous(s) for s in send]
    outs = [_output_view(r) for r in recv]
    rank, size = arena.rank, arena.size
    dtype = outs[rank].dtype
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
        if longest < 0:
            outs[rank].copy_(blocks[rank])
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
