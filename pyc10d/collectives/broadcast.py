"""Broadcast along a binomial tree rooted at ``root``: ceil(log2(size)) rounds."""

from __future__ import annotations

import torch

from ..core.tags import signature
from . import shm
from .context import OpContext


def broadcast(ctx: OpContext, flat: torch.Tensor, root: int) -> None:
    """Copy ``root``'s ``flat`` into every rank's ``flat`` (after every rank's signature
    reached every other rank, so that ranks that disagree on the root raise)."""
    size = ctx.size
    if size == 1:
        return
    arena = ctx.shm()
    if arena is not None:
        shm.broadcast(arena, flat, root, ctx.deadline)
        return
    ctx.agree(signature("broadcast", flat.dtype, flat.numel(), root=root))
    if flat.numel() == 0:
        return
    virtual = (ctx.rank - root) % size  # the root is virtual rank 0
    mask = 1
    while mask < size:
        if virtual < mask:
            child = virtual + mask
            if child < size:
                ctx.send((child + root) % size, 0, flat)
        elif virtual < 2 * mask:
            ctx.recv((virtual - mask + root) % size, 0, flat)
        mask <<= 1
