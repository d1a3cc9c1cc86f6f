"""The element types pyc10d moves, and the one numbering of them every layer uses on the wire.

torch 2.13's Gloo backend moves these types (it rejects int16 only when the work runs); pyc10d
checks up front (:mod:`pyc10d.process_group.validation`). :func:`dtype_code` numbers them for
messages that describe a tensor (the arena's collective signature, DDP's parameter metadata).
"""

from __future__ import annotations

import zlib

import torch

WIRE_DTYPES: tuple[torch.dtype, ...] = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
    torch.bool,
)
"""The supported element types in wire order: a type's code is its index."""

SUPPORTED_DTYPES: frozenset[torch.dtype] = frozenset(WIRE_DTYPES)
"""Element types the collectives move."""

_CODES = {dtype: code for code, dtype in enumerate(WIRE_DTYPES)}
UNKNOWN_CODE_BASE = 100
"""Codes from here on stand for types outside :data:`WIRE_DTYPES` (a hash of their name)."""


def dtype_code(dtype: torch.dtype) -> int:
    """A small int naming ``dtype``, the same in every process (its index in WIRE_DTYPES, else a
    hash of its name from :data:`UNKNOWN_CODE_BASE` on)."""
    code = _CODES.get(dtype)
    if code is not None:
        return code
    return UNKNOWN_CODE_BASE + zlib.crc32(str(dtype).encode()) % 100_000


def dtype_of(code: int) -> torch.dtype | None:
    """The type :func:`dtype_code` numbered ``code``; None for a code outside WIRE_DTYPES."""
    return WIRE_DTYPES[code] if 0 <= code < len(WIRE_DTYPES) else None
