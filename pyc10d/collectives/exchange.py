"""Personalised exchanges: gather, scatter, allgather, reduce-scatter, all-to-all, barrier.

Each rank sends everything it owes before receiving, so no exchange can deadlock: the
transport buffers what arrives before its receive is posted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import shm
from .context import PREPOST_MIN_BYTES, OpContext
from .reduction import combine


def _others(ctx: OpContext) -> list[int]:
    """Peers in the order this rank talks to them: starting after itself, to spread load."""
    return [(ctx.rank + i) % ctx.size for i in range(1, ctx.size)]


def gather(ctx: OpContext, send: torch.Tensor, recv: Sequence[torch.Tensor], root: int) -> None:
    """``root`` receives every rank's ``send`` into ``recv[rank]`` (contiguous tensors)."""
    if ctx.rank != root:
        ctx.send(root, 0, send)
        return
    recv[ctx.rank].copy_(send)
    for peer in _others(ctx):
        ctx.recv(peer, 0, recv[peer])


def scatter(ctx: OpContext, send: Sequence[torch.Tensor], recv: torch.Tensor, root: int) -> None:
    """``root`` sends ``send[r]`` to each rank r, which receives it into ``recv``."""
    if ctx.rank != root:
        ctx.recv(root, 0, recv)
        return
    for peer in _others(ctx):
        ctx.send(peer, 0, send[peer])
    recv.copy_(send[ctx.rank])


def allgather(ctx: OpContext, send: torch.Tensor, recv: Sequence[torch.Tensor]) -> None:
    """Every rank's ``send`` lands in ``recv[rank]`` on every rank."""
    arena = ctx.shm() if ctx.size > 1 and send.numel() else None
    if arena is not None:
        shm.allgather(arena, send, recv, ctx.deadline)
        return
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
    """``send[j]`` of rank i lands in ``recv[i]`` of rank j (blocks of any sizes)."""
    arena = ctx.shm() if ctx.size > 1 else None
    if arena is not None:
        shm.alltoall(arena, send, recv, ctx.deadline)
        return
    if any(_large(t) for t in recv):
        _pairwise(ctx, send, recv)
        recv[ctx.rank].copy_(send[ctx.rank])
        return
    for peer in _others(ctx):
        ctx.send(peer, 0, send[peer])
    recv[ctx.rank].copy_(send[ctx.rank])
    for peer in _others(ctx):
        ctx.recv(peer, 0, recv[peer])


def reduce_scatter(
    ctx: OpContext, send: Sequence[torch.Tensor], recv: torch.Tensor, op: object
) -> None:
    """Rank r ends with ``send[r]`` of every rank reduced (in rank order) into ``recv``."""
    even = all(s.numel() == recv.numel() for s in send)  # the same list of sizes on every rank
    arena = ctx.shm() if even and ctx.size > 1 and recv.numel() else None
    if arena is not None:
        shm.reduce_scatter(arena, send, recv, op, ctx.deadline)
        return
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
    """Dissemination barrier: in round k, signal rank + 2^k and wait for rank - 2^k."""
    arena = ctx.shm() if ctx.size > 1 else None
    if arena is not None:
        shm.barrier(arena, ctx.deadline)
        return
    token = torch.empty(0, dtype=torch.uint8)
    distance, step = 1, 0
    while distance < ctx.size:
        ctx.send((ctx.rank + distance) % ctx.size, step, token)
        ctx.recv((ctx.rank - distance) % ctx.size, step, token)
        distance <<= 1
        step += 1
