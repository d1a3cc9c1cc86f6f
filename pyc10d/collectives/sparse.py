"""Sparse COO allreduce (SUM): every rank's indices and values are exchanged and summed."""

from __future__ import annotations

import struct

import torch

from ..core.tags import signature
from .context import OpContext

_HEADER = struct.Struct("<q")  # number of non-zeros that follow


def sparse_allreduce(ctx: OpContext, tensor: torch.Tensor) -> torch.Tensor:
    """The sum of every rank's sparse ``tensor``, coalesced (the same on every rank)."""
    local = tensor.coalesce()
    if ctx.size > 1:
        ctx.agree(signature("sparse_allreduce", local.dtype, tensor.numel()))
    indices = local.indices().contiguous()
    values = local.values().contiguous()
    for peer in range(ctx.size):
        if peer != ctx.rank:
            ctx.send_bytes(peer, 0, _HEADER.pack(values.shape[0]))
            ctx.send(peer, 1, indices)
            ctx.send(peer, 2, values)
    all_indices, all_values = [], []
    for peer in range(ctx.size):
        if peer == ctx.rank:
            all_indices.append(indices)
            all_values.append(values)
            continue
        (nnz,) = _HEADER.unpack(ctx.recv_bytes(peer, 0))
        peer_indices = torch.empty((indices.shape[0], nnz), dtype=indices.dtype)
        peer_values = torch.empty((nnz, *values.shape[1:]), dtype=values.dtype)
        ctx.recv(peer, 1, peer_indices)
        ctx.recv(peer, 2, peer_values)
        all_indices.append(peer_indices)
        all_values.append(peer_values)
    summed = torch.sparse_coo_tensor(
        torch.cat(all_indices, dim=1), torch.cat(all_values), tensor.shape
    )
    return summed.coalesce()
