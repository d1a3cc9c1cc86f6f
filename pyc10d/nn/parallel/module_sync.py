"""DDP's start-up collectives: check every rank has the same parameters, then copy rank 0's state.

``verify_param_shape_across_processes`` mirrors torch's ``_verify_param_shape_across_processes``
(the parameter count, then each parameter's sizes, strides and dtype, against rank 0's), except
that every rank raises (naming the parameter and the rank that differs) instead of only the rank
that differs, so no rank is left waiting in the broadcasts that follow.
``broadcast_coalesced`` mirrors ``dist._broadcast_coalesced``: tensors are packed by dtype into
flat buffers of at most ``buffer_size`` bytes, one broadcast each.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

import torch
from torch import nn

from ...core.dtypes import dtype_code, dtype_of
from ...process_group import ProcessGroup


def _metadata(tensor: torch.Tensor) -> list[int]:
    """[dtype, ndim, *sizes, *strides] of one parameter."""
    return [dtype_code(tensor.dtype), tensor.dim(), *tensor.shape, *tensor.stride()]


def _allgather(pg: ProcessGroup, tensor: torch.Tensor) -> list[torch.Tensor]:
    outputs = [torch.empty_like(tensor) for _ in range(pg.size())]
    pg.allgather([outputs], [tensor]).wait()
    return outputs


def verify_param_shape_across_processes(
    pg: ProcessGroup, params: Sequence[torch.Tensor], names: Sequence[str] | None = None
) -> None:
    """RuntimeError on every rank unless all ranks' ``params`` match rank 0's in number and shape.

    Two allgathers: the count (torch's "DDP expects same model across all ranks" error), then
    each parameter's dtype, sizes and strides; the message names the parameter (index and name)
    and the rank whose parameter "appears not to match" the one in process 0.
    """
    rank, world = pg.rank(), pg.size()
    metas = [_metadata(p) for p in params]
    flat = [value for meta in metas for value in meta]
    counts = _allgather(pg, torch.tensor([len(params), len(flat)], dtype=torch.int64))
    for other, count in enumerate(counts):
        if int(count[0]) != len(params):
            raise RuntimeError(
                f"DDP expects same model across all ranks, but Rank {rank} has {len(params)} "
                f"params, while rank {other} has inconsistent {int(count[0])} params."
            )
    width = max(int(count[1]) for count in counts)
    mine = torch.full((width,), -1, dtype=torch.int64)
    mine[: len(flat)] = torch.tensor(flat, dtype=torch.int64)
    gathered = [t.tolist() for t in _allgather(pg, mine)]
    reference = _split(gathered[0], len(params))
    for other in range(1, world):
        theirs = _split(gathered[other], len(params))
        for index, (meta0, meta) in enumerate(zip(reference, theirs, strict=True)):
            if meta0 != meta:
                name = names[index] if names is not None and index < len(names) else None
                raise RuntimeError(_mismatch(rank, other, index, name, meta, meta0))


def _split(values: list[int], count: int) -> list[tuple[int, list[int], list[int]]]:
    """Per parameter (dtype code, sizes, strides) out of the flat metadata list."""
    out, pos = [], 0
    for _ in range(count):
        dtype, ndim = values[pos], values[pos + 1]
        sizes = values[pos + 2 : pos + 2 + ndim]
        strides = values[pos + 2 + ndim : pos + 2 + 2 * ndim]
        out.append((dtype, sizes, strides))
        pos += 2 + 2 * ndim
    return out


def _mismatch(
    rank: int, other: int, index: int, name: str | None, meta: tuple, meta0: tuple
) -> str:
    """torch's wording: "[r]: params[i] in this process with sizes ... appears not to match"."""
    where = "in this process" if other == rank else f"in process {other}"
    label = f"params[{index}]" + (f" ({name})" if name else "")
    (dtype, sizes, strides), (dtype0, sizes0, strides0) = meta, meta0
    if sizes != sizes0:
        what, mine, ref = "sizes", sizes, sizes0
    elif strides != strides0:
        what, mine, ref = "strides", strides, strides0
    else:
        what = "dtype"
        mine, ref = _dtype_label(dtype), _dtype_label(dtype0)
    return (
        f"[{rank}]: {label} {where} with sizes {sizes} appears not to match {what} of the same "
        f"param in process 0 ({what} {mine} vs {ref} in process 0). DDP expects the same model "
        f"on every rank."
    )


def _dtype_label(code: int) -> str:
    """``torch.float32`` for its :func:`dtype_code`, ``?`` for a type outside the wire list."""
    dtype = dtype_of(code)
    return "?" if dtype is None else str(dtype)


def broadcast_coalesced(
    pg: ProcessGroup, tensors: Sequence[torch.Tensor], buffer_size: int, src: int = 0
) -> None:
    """Copy ``src``'s values of ``tensors`` into every rank's, a few flat broadcasts in all.

    Tensors are grouped by dtype, in order, into buffers of up to ``buffer_size`` bytes (a bigger
    tensor goes alone); the broadcasts run concurrently and are all waited for.
    """
    chunks: list[list[torch.Tensor]] = []
    open_chunk: dict[torch.dtype, tuple[list[torch.Tensor], int]] = {}
    for tensor in tensors:
        members, size = open_chunk.get(tensor.dtype, ([], 0))
        nbytes = tensor.numel() * tensor.element_size()
        if members and size + nbytes > buffer_size:
            chunks.append(members)
            members, size = [], 0
        open_chunk[tensor.dtype] = ([*members, tensor], size + nbytes)
    chunks.extend(members for members, _ in open_chunk.values() if members)
    with torch.no_grad():
        pending = []
        for members in chunks:
            flat = torch.cat([t.detach().reshape(-1) for t in members])
            pending.append((members, flat, pg.broadcast([flat], root=src)))
        for members, flat, work in pending:
            work.wait()
            if pg.rank() == src:
                continue
            for tensor, part in zip(members, flat.split([t.numel() for t in members]), strict=True):
                tensor.copy_(part.view(tensor.shape))


def sync_module_states(
    module: nn.Module,
    pg: ProcessGroup,
    broadcast_bucket_size: int,
    src: int,
    params_and_buffers_to_ignore: Container[str],
    broadcast_buffers: bool = True,
) -> None:
    """Broadcast ``module``'s parameters (and buffers) from ``src`` (_sync_module_states)."""
    ignore = params_and_buffers_to_ignore
    states = [p.detach() for n, p in module.named_parameters() if n not in ignore]
    if broadcast_buffers:
        states += [b.detach() for n, b in module.named_buffers() if n not in ignore]
    if states:
        broadcast_coalesced(pg, states, broadcast_bucket_size, src)
