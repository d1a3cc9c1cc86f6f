"""Debug levels (OFF, INFO, DETAIL) and DETAIL's cross-rank consistency check of collectives.

The level starts from the environment when pyc10d is imported: ``PYC10D_DEBUG``, or else
``TORCH_DISTRIBUTED_DEBUG`` (``OFF``, ``INFO`` or ``DETAIL``, any case; a bad value raises
ValueError, as importing ``torch.distributed`` does). In DETAIL mode every functional collective
first calls :func:`check_before_collective`, which plays the part of torch's
``ProcessGroupWrapper``: the ranks exchange a fingerprint of the call (sequence number, op type,
reduce op and root where the collective has them, tensor shapes, dtypes and devices) and, if any
two differ, every rank raises a RuntimeError naming the ranks and what differs, instead of
hanging or computing garbage. (torch's fingerprint has no reduce op or root; pyc10d compares
them too, as every collective's signature does below DETAIL.)

The exchange runs on the group itself (torch uses a helper Gloo group): one ``_allgather_base``
of a fixed-size digest, and a second one with the full fingerprints only when the digests
differ. So in DETAIL mode each collective adds one or two operations to the group's sequence
number.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ..core.reduce_op import ReduceOpLike, reduce_op_of
from ..core.tensor_bytes import byte_view

__all__ = ["DebugLevel", "get_debug_level", "set_debug_level", "set_debug_level_from_env"]

ENV_VARS = ("PYC10D_DEBUG", "TORCH_DISTRIBUTED_DEBUG")
"""The environment variables read by :func:`set_debug_level_from_env`, first one set wins."""


class DebugLevel(enum.Enum):
    """How much checking and logging pyc10d does (torch.distributed.DebugLevel).

    ``DETAIL`` verifies before each functional collective that every rank runs the same one.
    """

    OFF = 0
    INFO = 1
    DETAIL = 2

    def __int__(self) -> int:
        return self.value


_level = DebugLevel.OFF


def get_debug_level() -> DebugLevel:
    """The current debug level (torch.distributed.get_debug_level)."""
    return _level


def set_debug_level(level: DebugLevel | Any) -> None:
    """Set the debug level (torch.distributed.set_debug_level).

    Takes a :class:`DebugLevel`; torch's own ``DebugLevel`` members are accepted too.
    """
    global _level
    if isinstance(level, DebugLevel):
        _level = level
        return
    name = getattr(level, "name", None)
    if type(level).__name__ == "DebugLevel" and name in DebugLevel.__members__:
        _level = DebugLevel[name]
        return
    raise TypeError(f"set_debug_level() expects a DebugLevel (OFF, INFO or DETAIL), got {level!r}")


def _parse_level(value: str, variable: str) -> DebugLevel:
    """The level named by ``value`` (any case); ValueError naming ``variable`` and ``value``."""
    try:
        return DebugLevel[value.strip().upper()]
    except KeyError:
        raise ValueError(
            f"The value of {variable} must be OFF, INFO, or DETAIL (got {value!r})."
        ) from None


def set_debug_level_from_env() -> None:
    """Set the level from ``PYC10D_DEBUG``, else ``TORCH_DISTRIBUTED_DEBUG``; OFF if neither is
    set (torch.distributed.set_debug_level_from_env). An empty variable counts as unset."""
    global _level
    for variable in ENV_VARS:
        value = os.environ.get(variable, "")
        if value.strip():
            _level = _parse_level(value, variable)
            return
    _level = DebugLevel.OFF


# -- DETAIL's collective fingerprint ----------------------------------------------------------

_OP_TYPES = {
    "broadcast": "BROADCAST",
    "all_reduce": "ALLREDUCE",
    "allreduce": "ALLREDUCE",
    "all_reduce_coalesced": "ALLREDUCE_COALESCED",
    "allreduce_coalesced": "ALLREDUCE_COALESCED",
    "reduce": "REDUCE",
    "all_gather": "ALLGATHER",
    "allgather": "ALLGATHER",
    "all_gather_single": "_ALLGATHER_BASE",
    "all_gather_into_tensor": "_ALLGATHER_BASE",
    "_all_gather_base": "_ALLGATHER_BASE",
    "_allgather_base": "_ALLGATHER_BASE",
    "all_gather_coalesced": "ALLGATHER_COALESCED",
    "allgather_coalesced": "ALLGATHER_COALESCED",
    "gather": "GATHER",
    "scatter": "SCATTER",
    "reduce_scatter": "REDUCE_SCATTER",
    "reduce_scatter_single": "_REDUCE_SCATTER_BASE",
    "reduce_scatter_tensor": "_REDUCE_SCATTER_BASE",
    "_reduce_scatter_base": "_REDUCE_SCATTER_BASE",
    "all_to_all_single": "ALLTOALL_BASE",
    "alltoall_base": "ALLTOALL_BASE",
    "all_to_all": "ALLTOALL",
    "alltoall": "ALLTOALL",
    "barrier": "BARRIER",
    "send": "SEND",
    "recv": "RECV",
}

_HEADER_BYTES = 8 + 16  # payload length (int64) and a 16-byte blake2b digest of the payload


def op_type_name(op_name: str) -> str:
    """torch's OpType name for a collective (``"all_reduce"`` -> ``"ALLREDUCE"``)."""
    return _OP_TYPES.get(op_name, op_name.upper())


@functools.lru_cache(maxsize=64)
def _scalar_type_name(dtype: torch.dtype) -> str:
    """The C++ ScalarType name torch prints for ``dtype`` (``torch.float32`` -> ``Float``)."""
    try:
        name = torch.empty(0, dtype=dtype).type()  # e.g. "torch.FloatTensor"
    except (RuntimeError, TypeError):
        return str(dtype)
    return name.removeprefix("torch.").removesuffix("Tensor")


def _flat_tensors(tensors: Iterable[Any]) -> list[torch.Tensor]:
    """The tensors in ``tensors``, nested lists and tuples flattened, anything else skipped."""
    found: list[torch.Tensor] = []
    for item in tensors:
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, (list, tuple)):
            found.extend(_flat_tensors(item))
    return found


def _fingerprint(
    seq: int,
    op_name: str,
    tensors: Sequence[torch.Tensor],
    op: ReduceOpLike | None = None,
    root: int | None = None,
) -> dict[str, Any]:
    """What DETAIL compares across ranks (torch's ``CollectiveFingerPrint``, plus the reduce op
    and the root where the collective has them)."""
    flat = _flat_tensors(tensors)
    fp: dict[str, Any] = {
        "seq": seq,
        "op": op_type_name(op_name),
        "shapes": [list(t.shape) for t in flat],
        "dtypes": [_scalar_type_name(t.dtype) for t in flat],
        "devices": [t.device.type for t in flat],
    }
    if op is not None:
        fp["reduce_op"] = reduce_op_of(op).name
    if root is not None:
        fp["root"] = int(root)
    return fp


def _extras(fp: dict[str, Any]) -> str:
    """``, ReduceOp=SUM, Root=0`` for the fields torch's fingerprint does not have."""
    parts = []
    if "reduce_op" in fp:
        parts.append(f", ReduceOp={fp['reduce_op']}")
    if "root" in fp:
        parts.append(f", Root={fp['root']}")
    return "".join(parts)


def _describe(fp: dict[str, Any]) -> str:
    """``CollectiveFingerPrint(...)`` as torch prints it (the shape shown is the first tensor's),
    with the reduce op and root where there are."""
    extras = _extras(fp)
    if not fp["shapes"]:
        return f"CollectiveFingerPrint(SequenceNumber={fp['seq']}, OpType={fp['op']}{extras})"
    shape = ", ".join(str(d) for d in fp["shapes"][0])
    dtypes = ", ".join(fp["dtypes"])
    devices = ", ".join(fp["devices"])
    return (
        f"CollectiveFingerPrint(SequenceNumber={fp['seq']}, OpType={fp['op']}{extras}, "
        f"TensorShape=[{shape}], TensorDtypes=[{dtypes}], TensorDeviceTypes=[{devices}])"
    )


def _differences(mine: dict[str, Any], other: dict[str, Any]) -> str:
    """torch's "Collectives differ in the following aspects: ..." summary (empty if none)."""
    parts = []
    if mine["seq"] != other["seq"]:
        parts.append(f"\t Sequence number: {mine['seq']} vs {other['seq']}")
    if mine["op"] != other["op"]:
        parts.append(f"  Op type: {mine['op']} vs {other['op']}")
    if mine.get("reduce_op") != other.get("reduce_op"):
        parts.append(f"  Reduce op: {mine.get('reduce_op')} vs {other.get('reduce_op')}")
    if mine.get("root") != other.get("root"):
        parts.append(f"  Root: {mine.get('root')} vs {other.get('root')}")
    for key, label in (("shapes", "shapes"), ("dtypes", "dtypes"), ("devices", "devices")):
        if mine[key] != other[key]:
            parts.append(f"  Tensor Tensor {label}: {mine[key]} vs {other[key]}")
    if not parts:
        return ""
    return " Collectives differ in the following aspects: " + "".join(parts)


def _encode(fp: dict[str, Any]) -> bytes:
    return json.dumps(fp, sort_keys=True, separators=(",", ":")).encode()


def _allgather_bytes(pg: Any, data: torch.Tensor) -> torch.Tensor:
    """Every rank's equally sized uint8 ``data``, rank-major, through ``pg._allgather_base``."""
    gathered = torch.empty(data.numel() * pg.size(), dtype=torch.uint8)
    pg._allgather_base(gathered, data).wait()
    return gathered.view(pg.size(), data.numel())


def check_before_collective(
    pg: Any,
    op_name: str,
    tensors: Sequence[torch.Tensor],
    op: ReduceOpLike | None = None,
    root: int | None = None,
) -> None:
    """In DETAIL mode, verify across ``pg``'s ranks that they all run ``op_name`` on tensors of
    the same dtypes and shapes (with the same reduce ``op`` and ``root``, where the collective
    has them); raise on every rank, naming the ranks and what differs.

    Mirrors torch's ProcessGroupWrapper: the error reads "Detected mismatch between collectives
    on ranks. Rank 0 is running collective: CollectiveFingerPrint(...), but Rank 1 is running
    collective: CollectiveFingerPrint(...). Collectives differ in the following aspects: ...".
    A no-op below DETAIL, on a single-rank group, or when ``pg`` is None (a non-member).
    """
    if _level is DebugLevel.DETAIL and pg is not None:
        verify_same_collective(pg, op_name, tensors, op, root)


def verify_same_collective(
    pg: Any,
    op_name: str,
    tensors: Sequence[torch.Tensor],
    op: ReduceOpLike | None = None,
    root: int | None = None,
) -> None:
    """The check of :func:`check_before_collective`, whatever the debug level (the torch
    backend runs it when torch's own level is DETAIL)."""
    if pg.size() == 1:
        return
    mine = _fingerprint(pg._get_sequence_number_for_group(), op_name, tensors, op, root)
    payload = _encode(mine)
    header = torch.empty(_HEADER_BYTES, dtype=torch.uint8)
    header[:8] = torch.tensor([len(payload)], dtype=torch.int64).view(torch.uint8)
    digest = hashlib.blake2b(payload, digest_size=16).digest()
    header[8:] = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
    headers = _allgather_bytes(pg, header)
    if bool((headers == header).all()):
        return
    # Some rank differs: every rank saw that, so all of them take part in this second exchange.
    lengths = headers[:, :8].contiguous().view(torch.int64).view(-1).tolist()
    padded = torch.zeros(max(lengths), dtype=torch.uint8)
    padded[: len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    payloads = _allgather_bytes(pg, padded)
    me = pg.rank()
    for rank, length in enumerate(lengths):
        other = json.loads(bytes(byte_view(payloads[rank, :length])))
        if other != mine:
            raise RuntimeError(
                f"Detected mismatch between collectives on ranks. Rank {me} is running "
                f"collective: {_describe(mine)}, but Rank {rank} is running collective: "
                f"{_describe(other)}.{_differences(mine, other)}"
            )


set_debug_level_from_env()
