"""Object collectives: broadcast, gather, scatter and send/recv picklable Python objects.

As in torch, each object is pickled into a uint8 tensor; the sizes travel first, then the
payloads (padded to the largest where the collective needs equal sizes), and the receivers
unpickle into the lists they passed. ``src``/``dst`` are global ranks, ``group_src``/
``group_dst`` ranks in ``group``; on ranks outside ``group`` the calls warn and return. They run
on the group's ProcessGroup methods and block until done. Everything is pickled on the CPU;
``device`` is accepted for compatibility and not used. Unpickling runs arbitrary code: only
exchange objects with ranks you trust (torch's warning).
"""

from __future__ import annotations

import pickle
from typing import Any

import torch

from ..core.tensor_bytes import byte_view
from ..process_group import BroadcastOptions, GatherOptions, ProcessGroup, ScatterOptions
from .state import (
    get_global_rank,
    group_rank_of,
    is_non_member,
    resolve,
    warn_not_in_group,
)

__all__ = [
    "all_gather_object",
    "broadcast_object_list",
    "gather_object",
    "recv_object_list",
    "scatter_object_list",
    "send_object_list",
]

_TAG = 0  # torch's object send/recv use the default tag


# -- serialization ----------------------------------------------------------------------------
def _to_tensor(obj: Any) -> torch.Tensor:
    """``obj`` pickled into a 1-D uint8 tensor."""
    return torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)


def _to_object(tensor: torch.Tensor, size: int) -> Any:
    """Unpickle the first ``size`` bytes of the 1-D uint8 ``tensor``."""
    return pickle.loads(byte_view(tensor[:size]))


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One uint8 tensor holding ``tensors`` back to back (no copy for a single one)."""
    if len(tensors) == 1:
        return tensors[0]
    return torch.cat(tensors) if tensors else torch.empty(0, dtype=torch.uint8)


def _padded_rows(tensors: list[torch.Tensor], width: int) -> torch.Tensor:
    """A ``(len(tensors), width)`` uint8 tensor, row i starting with ``tensors[i]``, zero-padded."""
    rows = torch.zeros(len(tensors), width, dtype=torch.uint8)
    for row, tensor in zip(rows, tensors, strict=True):
        row[: tensor.numel()] = tensor
    return rows


def _unpack_into(object_list: list[Any], payload: torch.Tensor, sizes: list[int]) -> None:
    """Fill ``object_list`` with the objects pickled back to back in ``payload``."""
    offset = 0
    for index, size in enumerate(sizes):
        object_list[index] = _to_object(payload[offset : offset + size], size)
        offset += size


# -- helpers ----------------------------------------------------------------------------------
def _member_pg(group: Any, op_name: str) -> ProcessGroup | None:
    """The group's ProcessGroup, or None (after torch's warning) on a rank outside it."""
    pg = None if is_non_member(group) else resolve(group)
    if pg is None:
        warn_not_in_group(op_name)
    return pg


def _root(group: Any, rank: int | None, group_rank: int | None, what: str) -> int:
    """The group rank of the root; with neither given, global rank 0 (torch's default)."""
    if rank is None and group_rank is None:
        rank = 0
    return group_rank_of(group, rank, group_rank, what)


def _peer(group: Any, rank: int | None, group_rank: int | None, what: str, me: int) -> int:
    """The group rank of a send/recv peer; ValueError if none is given or it is this rank."""
    if rank is None and group_rank is None:
        raise ValueError(f"Must specify {what} or group_{what}")
    peer = group_rank_of(group, rank, group_rank, what)
    if peer == me:
        kind = "destination" if what == "dst" else "source"
        raise ValueError(
            f"Invalid {kind} rank: {kind} rank should not be the same as the rank of the "
            "current process."
        )
    return peer


def _allgather_sizes(pg: ProcessGroup, size: int) -> list[int]:
    """Every rank's ``size``, in group-rank order."""
    sizes = torch.empty(pg.size(), dtype=torch.long)
    pg._allgather_base(sizes, torch.tensor([size], dtype=torch.long)).wait()
    return sizes.tolist()


def _padded(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """``tensor`` zero-padded to ``width`` bytes."""
    if tensor.numel() == width:
        return tensor
    return _padded_rows([tensor], width)[0]


# -- collectives ------------------------------------------------------------------------------
def all_gather_object(object_list: list[Any], obj: Any, group: Any = None) -> None:
    """Gather every rank's picklable ``obj`` into ``object_list`` (group-size long) on every
    rank (torch.distributed.all_gather_object): sizes, then padded payloads, are all-gathered."""
    pg = _member_pg(group, "all_gather_object")
    if pg is None:
        return
    mine = _to_tensor(obj)
    sizes = _allgather_sizes(pg, mine.numel())
    width = max(sizes)
    gathered = torch.empty(width * pg.size(), dtype=torch.uint8)
    pg._allgather_base(gathered, _padded(mine, width)).wait()
    for rank, size in enumerate(sizes):
        object_list[rank] = _to_object(gathered[rank * width : (rank + 1) * width], size)


def gather_object(
    obj: Any,
    object_gather_list: list[Any] | None = None,
    dst: int | None = None,
    group: Any = None,
    group_dst: int | None = None,
) -> None:
    """Gather every rank's picklable ``obj`` into ``object_gather_list`` on the destination
    (torch.distributed.gather_object): ``dst`` is a global rank (default 0), ``group_dst`` a group
    rank; the list must be given (group-size long) on the destination only."""
    pg = _member_pg(group, "gather_object")
    if pg is None:
        return
    root = _root(group, dst, group_dst, "dst")
    me = pg.rank()
    if me == root and not object_gather_list:
        raise ValueError("Argument ``gather_list`` must be specified on destination rank.")
    if me != root and object_gather_list:
        raise ValueError("Argument ``gather_list`` must NOT be specified on non-destination ranks.")
    mine = _to_tensor(obj)
    sizes = _allgather_sizes(pg, mine.numel())  # every rank needs the largest size
    width = max(sizes)
    opts = GatherOptions()
    opts.rootRank = root
    outputs = []
    if me == root:
        outputs = [list(torch.empty(pg.size(), width, dtype=torch.uint8))]
    pg.gather(outputs, [_padded(mine, width)], opts).wait()
    if me != root or object_gather_list is None:
        return
    for rank, size in enumerate(sizes):
        object_gather_list[rank] = _to_object(outputs[0][rank], size)


def broadcast_object_list(
    object_list: list[Any],
    src: int | None = None,
    group: Any = None,
    device: Any = None,
    group_src: int | None = None,
) -> None:
    """Replace ``object_list``'s entries with the source rank's on every other rank
    (torch.distributed.broadcast_object_list): ``src`` is a global rank (default 0), ``group_src``
    a group rank; every rank passes a list of the same length."""
    pg = _member_pg(group, "broadcast_object_list")
    if pg is None:
        return
    root = _root(group, src, group_src, "src")
    me = pg.rank()
    opts = BroadcastOptions()
    opts.rootRank = root
    if me == root:
        tensors = [_to_tensor(obj) for obj in object_list]
        sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.long)
    else:
        sizes = torch.empty(len(object_list), dtype=torch.long)
    pg.broadcast([sizes], opts).wait()
    size_list = sizes.tolist()
    total = sum(size_list)
    payload = _concat(tensors) if me == root else torch.empty(total, dtype=torch.uint8)
    if total:
        pg.broadcast([payload], opts).wait()
    if me != root:
        _unpack_into(object_list, payload, size_list)


def scatter_object_list(
    scatter_object_output_list: list[Any],
    scatter_object_input_list: list[Any] | None = None,
    src: int | None = None,
    group: Any = None,
    group_src: int | None = None,
) -> None:
    """Give rank r object ``r`` of the source's ``scatter_object_input_list``, stored as the first
    entry of its ``scatter_object_output_list`` (torch.distributed.scatter_object_list);
    ``src`` is a global rank (default 0), ``group_src`` a group rank."""
    pg = _member_pg(group, "scatter_object_list")
    if pg is None:
        return
    root = _root(group, src, group_src, "src")
    if not isinstance(scatter_object_output_list, list) or len(scatter_object_output_list) < 1:
        raise ValueError(
            "Expected argument scatter_object_output_list to be a list of size at least 1."
        )
    me = pg.rank()
    width = torch.zeros(1, dtype=torch.long)
    if me == root:
        if scatter_object_input_list is None:
            raise ValueError("source rank must provide non-None scatter_object_input_list")
        tensors = [_to_tensor(obj) for obj in scatter_object_input_list]
        size_tensors = [torch.tensor([t.numel()], dtype=torch.long) for t in tensors]
        width[0] = max(t.numel() for t in tensors)
    # the root sends the largest size first: scatter needs equal-sized tensors everywhere
    broadcast_opts = BroadcastOptions()
    broadcast_opts.rootRank = root
    pg.broadcast([width], broadcast_opts).wait()
    opts = ScatterOptions()
    opts.rootRank = root
    output = torch.empty(int(width), dtype=torch.uint8)
    inputs = [list(_padded_rows(tensors, int(width)))] if me == root else []
    pg.scatter([output], inputs, opts).wait()
    size = torch.zeros(1, dtype=torch.long)
    pg.scatter([size], [size_tensors] if me == root else [], opts).wait()
    scatter_object_output_list[0] = _to_object(output, int(size))


# -- point to point ---------------------------------------------------------------------------
def send_object_list(
    object_list: list[Any],
    dst: int | None = None,
    group: Any = None,
    device: Any = None,
    group_dst: int | None = None,
    use_batch: bool = False,
) -> None:
    """Send the picklable objects of ``object_list`` to ``dst`` (global) or ``group_dst``
    (torch.distributed.send_object_list); the receiver passes a list of the same length.
    ``use_batch`` is accepted and changes nothing (batched p2p is plain p2p here)."""
    pg = _member_pg(group, "send_object_list")
    if pg is None:
        return
    peer = _peer(group, dst, group_dst, "dst", pg.rank())
    tensors = [_to_tensor(obj) for obj in object_list]
    sizes = torch.tensor([t.numel() for t in tensors], dtype=torch.long)
    pg.send([sizes], peer, _TAG).wait()
    payload = _concat(tensors)
    if payload.numel():
        pg.send([payload], peer, _TAG).wait()


def recv_object_list(
    object_list: list[Any],
    src: int | None = None,
    group: Any = None,
    device: Any = None,
    group_src: int | None = None,
    use_batch: bool = False,
) -> int:
    """Receive objects sent by ``send_object_list`` into ``object_list``; return the sender's
    global rank (torch.distributed.recv_object_list). With neither ``src`` nor ``group_src``, take
    the first sender (its payload then comes from that same rank). -1 outside ``group``."""
    pg = _member_pg(group, "recv_object_list")
    if pg is None:
        return -1
    sizes = torch.empty(len(object_list), dtype=torch.long)
    if src is None and group_src is None:
        work = pg.recv_anysource([sizes], _TAG)
        work.wait()
        peer = work.source_rank()
    else:
        peer = _peer(group, src, group_src, "src", pg.rank())
        pg.recv([sizes], peer, _TAG).wait()
    size_list = sizes.tolist()
    payload = torch.empty(sum(size_list), dtype=torch.uint8)
    if payload.numel():
        pg.recv([payload], peer, _TAG).wait()
    _unpack_into(object_list, payload, size_list)
    return get_global_rank(group, peer)
