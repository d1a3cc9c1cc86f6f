"""Allreduce and reduce: direct exchange for small buffers, ring reduce-scatter + allgather for
large ones.

Half-precision sums over three or more ranks round once (see :mod:`.reduction`). A ring
reduce-scatter would pass rounded partial sums from rank to rank, so for them the large path
reduce-scatters directly instead (each rank sends every owner its chunk, the owner sums all of
them in float32, in rank order): as many bytes and messages per rank as the ring's. The ring
allgather follows as usual.
"""

from __future__ import annotations

import torch

from ..core.errors import DistBackendError
from ..core.tags import signature
from ..core.tensor_bytes import byte_view
from . import exchange, shm
from .context import OpContext
from .reduction import accumulates_wide, combine, reduce_into

DIRECT_MAX_BYTES = 64 * 1024  # up to this size every rank sends its whole buffer to every peer


def _contributions(ctx: OpContext, flat: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``flat`` in rank order (this rank's as a copy), received as message 0."""
    parts: list[torch.Tensor] = []
    for peer in range(ctx.size):
        if peer == ctx.rank:
            parts.append(flat.clone())
        else:
            part = torch.empty_like(flat)
            ctx.recv(peer, 0, part)
            parts.append(part)
    return parts


def allreduce_direct(ctx: OpContext, flat: torch.Tensor, op: object) -> None:
    """Every rank sends its buffer, behind its signature, to every other rank and reduces all
    of them (one round: the signature exchange carries the data)."""
    sig = signature("allreduce", flat.dtype, flat.numel(), op)
    extras = ctx.agree(sig, byte_view(flat).tobytes())
    parts: list[torch.Tensor] = []
    for peer, data in enumerate(extras):
        if peer == ctx.rank:
            parts.append(flat.clone())
            continue
        part = torch.empty_like(flat)
        view = byte_view(part)
        if len(data) != len(view):
            raise DistBackendError(
                f"rank {peer} sent {len(data)} bytes for allreduce #{ctx.seq}, expected {len(view)}"
            )
        view[:] = data
        parts.append(part)
    combine(op, flat, parts)


def ring_reduce_scatter(ctx: OpContext, chunks: list[torch.Tensor], op: object) -> int:
    """Ring reduce-scatter over ``chunks`` (one per rank) in place; return the index of the chunk
    this rank now holds fully reduced."""
    rank, size = ctx.rank, ctx.size
    right, left = (rank + 1) % size, (rank - 1) % size
    scratch = torch.empty(max(c.numel() for c in chunks), dtype=chunks[0].dtype)
    for step in range(size - 1):
        send_index, recv_index = (rank - step) % size, (rank - step - 1) % size
        incoming = scratch[: chunks[recv_index].numel()]
        ctx.send_recv(right, chunks[send_index], left, incoming, step)
        reduce_into(op, chunks[recv_index], incoming)
    return (rank + 1) % size


def ring_allgather(
    ctx: OpContext, chunks: list[torch.Tensor], first_step: int, owned: int | None = None
) -> None:
    """Ring allgather: rank r starts owning chunk ``owned`` (default ``(r + 1) % size``; it must
    be the same offset from the rank on every rank) and ends with all of them."""
    rank, size = ctx.rank, ctx.size
    right, left = (rank + 1) % size, (rank - 1) % size
    owned = (rank + 1) % size if owned is None else owned
    for step in range(size - 1):
        send_index, recv_index = (owned - step) % size, (owned - step - 1) % size
        ctx.send_recv(right, chunks[send_index], left, chunks[recv_index], first_step + step)


def allreduce_ring(ctx: OpContext, flat: torch.Tensor, op: object) -> None:
    """Bandwidth-optimal allreduce: ring reduce-scatter, then ring allgather (a direct
    reduce-scatter first for half-precision sums of three or more ranks: see above)."""
    chunks = list(torch.tensor_split(flat, ctx.size))
    if accumulates_wide(op, flat.dtype, ctx.size):
        exchange.reduce_scatter_messages(ctx, chunks, chunks[ctx.rank], op)
        ring_allgather(ctx, chunks, ctx.size - 1, owned=ctx.rank)
        return
    ring_reduce_scatter(ctx, chunks, op)
    ring_allgather(ctx, chunks, ctx.size - 1)


def allreduce(ctx: OpContext, flat: torch.Tensor, op: object) -> None:
    """Reduce ``flat`` (contiguous, 1-D) across the group in place, choosing by size."""
    if ctx.size == 1:
        return
    arena = ctx.shm()
    if arena is not None:
        shm.allreduce(arena, flat, op, ctx.deadline)
    elif flat.numel() * flat.element_size() <= DIRECT_MAX_BYTES or flat.numel() < ctx.size:
        allreduce_direct(ctx, flat, op)
    else:
        ctx.agree(signature("allreduce", flat.dtype, flat.numel(), op))
        allreduce_ring(ctx, flat, op)


def reduce(ctx: OpContext, flat: torch.Tensor, op: object, root: int) -> None:
    """Reduce ``flat`` onto ``root`` (other ranks' buffers are left as they were)."""
    if ctx.size == 1:
        return
    arena = ctx.shm()
    if arena is not None:
        shm.reduce(arena, flat, op, root, ctx.deadline)
        return
    ctx.agree(signature("reduce", flat.dtype, flat.numel(), op, root))
    if flat.numel() == 0:
        return
    if ctx.rank != root:
        ctx.send(root, 0, flat)
        return
    combine(op, flat, _contributions(ctx, flat))
