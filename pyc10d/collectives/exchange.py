"""Personalised exchanges: gather, scatter, allgather, reduce-scatter, all-to-all, barrier.

Each rank sends everything it owes before receiving, so no exchange can deadlock: the
transport buffers what arrives before its receive is posted. Over a transport each starts with
:meth:`OpContext.agree` (signatures, and for all-to-all every rank's block sizes); a rank that
refused its part of a gather or scatter (:func:`refuse`) only sends its refusal there.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import torch

from ..core.tags import Signature, refusal, signature
from . import shm
from .context import PREPOST_MIN_BYTES, OpContext
from .reduction import combine


def _others(ctx: OpContext) -> list[int]:
    """Peers in the order this rank talks to them: starting after itself, to spread load."""
    return [(ctx.rank + i) % ctx.size for i in range(1, ctx.size)]


def refuse(ctx: OpContext, sig: Signature, reason: str) -> None:
    """Take part in collective ``sig`` only to refuse it: every peer raises, quoting ``reason``
    (this rank's own error, which its caller raises). It goes the way the collective's data
    would: the arena, or the transport for gather and scatter."""
    if ctx.size == 1:
        return
    arena = ctx.shm() if sig.kind() not in TRANSPORT_ONLY else None
    if arena is not None:
        shm.refuse(arena, sig, reason.encode(), ctx.deadline)
    else:
        ctx.agree(refusal(sig), reason.encode())
        ctx.transport.discard(ctx.seq)  # the peers' signatures, arriving or not


TRANSPORT_ONLY = frozenset({"gather", "scatter", "sparse_allreduce"})
"""Collectives that move their data over the transport even when the group has an arena."""


def gather_signature(send: torch.Tensor, root: int) -> Signature:
    """What a rank runs as ``gather(ctx, send, ..., root)``."""
    return signature("gather", send.dtype, send.numel(), root=root)


def scatter_signature(recv: torch.Tensor, root: int) -> Signature:
    """What a rank runs as ``scatter(ctx, ..., recv, root)``."""
    return signature("scatter", recv.dtype, recv.numel(), root=root)


def gather(ctx: OpContext, send: torch.Tensor, recv: Sequence[torch.Tensor], root: int) -> None:
    """``root`` receives every rank's ``send`` into ``recv[rank]`` (contiguous tensors)."""
    if ctx.size > 1:
        ctx.agree(gather_signature(send, root))
    if ctx.rank != root:
        ctx.send(root, 0, send)
        return
    recv[ctx.rank].copy_(send)
    for peer in _others(ctx):
        ctx.recv(peer, 0, recv[peer])


def scatter(ctx: OpContext, send: Sequence[torch.Tensor], recv: torch.Tensor, root: int) -> None:
    """``root`` sends ``send[r]`` to each rank r, which receives it into ``recv``."""
    if ctx.size > 1:
        ctx.agree(scatter_signature(recv, root))
    if ctx.rank != root:
        ctx.recv(root, 0, recv)
        return
    for peer in _others(ctx):
        ctx.send(peer, 0, send[peer])
    recv.copy_(send[ctx.rank])


def allgather(ctx: OpContext, send: torch.Tensor, recv: Sequence[torch.Tensor]) -> None:
    """Every rank's ``send`` lands in ``recv[rank]`` on every rank."""
    arena = ctx.shm() if ctx.size > 1 else None
    if arena is not None:
        shm.allgather(arena, send, recv, ctx.deadline)
        return
    if ctx.size > 1:
        ctx.agree(signature("allgather", send.dtype, send.numel()))
    if _large(send):
        _pairwise(ctx, [send] * ctx.size, recv)
        recv[ctx.rank].copy_(send)
        return
    for peer in _others(ctx):
        ctx.send(peer, 0, send)
    recv[ctx.rank].copy_(send)
    for peer in _others(ctx):
        ctx.recv(peer, 0, recv[peer])


def _large(tensor: torch.Tensor) -> bool:
    """From this size a message goes pairwise, its receive posted before the matching send."""
    return tensor.numel() * tensor.element_size() >= PREPOST_MIN_BYTES


def _pairwise(ctx: OpContext, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor]) -> None:
    """In step i, send ``send[rank + i]`` and receive ``recv[rank - i]`` at once, the receive
    posted first (in place, with no buffering); the tags are those of the direct exchange, so
    ranks may choose either way independently."""
    rank, size = ctx.rank, ctx.size
    for distance in range(1, size):
        dst, src = (rank + distance) % size, (rank - distance) % size
        ctx.send_recv(dst, send[dst], src, recv[src], 0)


def alltoall(ctx: OpContext, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor]) -> None:
    """``send[j]`` of rank i lands in ``recv[i]`` of rank j (blocks of any sizes; every rank
    checks every pair's, on every rank, before data moves)."""
    arena = ctx.shm() if ctx.size > 1 else None
    if arena is not None:
        shm.alltoall(arena, send, recv, ctx.deadline)
        return
    if ctx.size > 1:
        _agree_block_sizes(ctx, send, recv)
    if any(_large(t) for t in recv):
        _pairwise(ctx, send, recv)
        recv[ctx.rank].copy_(send[ctx.rank])
        return
    for peer in _others(ctx):
        ctx.send(peer, 0, send[peer])
    recv[ctx.rank].copy_(send[ctx.rank])
    for peer in _others(ctx):
        ctx.recv(peer, 0, recv[peer])


def _agree_block_sizes(
    ctx: OpContext, send: Sequence[torch.Tensor], recv: Sequence[torch.Tensor]
) -> None:
    """:meth:`OpContext.agree` on alltoall, with every rank's block sizes (sent and expected):
    a rank whose block size its receiver does not expect fails every rank, before data moves."""
    sizes = [t.numel() for t in send] + [t.numel() for t in recv]
    extras = ctx.agree(alltoall_signature(recv), array("q", sizes).tobytes())
    rows = [array("q", bytes(extra)) for extra in extras]
    shm.check_block_sizes([row[: ctx.size] for row in rows], [row[ctx.size :] for row in rows])


def alltoall_signature(recv: Sequence[torch.Tensor]) -> Signature:
    """What a rank runs as an alltoall into ``recv`` (block sizes are compared apart)."""
    return signature("alltoall", recv[0].dtype, len(recv))


def reduce_scatter(
    ctx: OpContext, send: Sequence[torch.Tensor], recv: torch.Tensor, op: object
) -> None:
    """Rank r ends with ``send[r]`` of every rank reduced (in rank order) into ``recv``."""
    even = all(s.numel() == recv.numel() for s in send)  # the same list of sizes on every rank
    arena = ctx.shm() if even and ctx.size > 1 else None
    if arena is not None:
        shm.reduce_scatter(arena, send, recv, op, ctx.deadline)
        return
    if ctx.size > 1:
        total = sum(s.numel() for s in send)
        ctx.agree(signature("reduce_scatter", recv.dtype, total, op))
    reduce_scatter_messages(ctx, send, recv, op)


def reduce_scatter_messages(
    ctx: OpContext, send: Sequence[torch.Tensor], recv: torch.Tensor, op: object
) -> None:
    """:func:`reduce_scatter` by messages, signatures already agreed (also a step of the
    half-precision ring allreduce)."""
    parts = [
        send[peer].clone() if peer == ctx.rank else torch.empty_like(recv)  # recv may alias it
        for peer in range(ctx.size)
    ]
    if _large(recv):
        _pairwise(ctx, send, parts)
    else:
        for peer in _others(ctx):
            ctx.send(peer, 0, send[peer])
        for peer in _others(ctx):
            ctx.recv(peer, 0, parts[peer])
    combine(op, recv, parts)


def barrier(ctx: OpContext) -> None:
    """Every rank tells every other that it is here (its signature: ranks that run another
    collective as this one raise), then waits to hear from all of them."""
    if ctx.size == 1:
        return
    arena = ctx.shm()
    if arena is not None:
        shm.barrier(arena, ctx.deadline)
        return
    ctx.agree(shm.BARRIER)
