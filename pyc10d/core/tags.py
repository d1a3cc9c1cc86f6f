"""Message tags, and the signature every collective carries with its data.

A collective's message ``step`` of collective number ``seq`` is tagged ``seq << STEP_BITS | step``;
the shared-memory arena numbers its rounds the same way. User point-to-point tags carry
:data:`P2P_TAG_BIT`, so they never collide with a collective's (torch's tags are plain ints).
Control messages (a rank giving up on a collective) carry :data:`CONTROL_TAG_BIT` instead.

A collective's *signature* says what a rank runs as collective ``seq``: the operation, reduce
op, root, dtype and element count, and whether the rank refused to run it (bad arguments that
only it could see). Every rank posts it with its data (the arena's control block, or the first
message of each collective over a transport), so ranks that disagree raise an error naming both
sides instead of mixing data. It is a pair of u64: see :func:`signature`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from .dtypes import dtype_code, dtype_of

PART_STEP_BITS = 16
"""Low bits of a step that number the messages of one part of a coalesced collective (or of a
whole plain collective): :data:`SIGNATURE_STEP` is the last of them."""

PART_BITS = 10
"""Bits above :data:`PART_STEP_BITS` numbering the parts of a coalesced collective: parts get
distinct tags up to :data:`PARTS`, then reuse them in order (see :func:`part_step_base`)."""

PARTS = 1 << PART_BITS
"""How many parts of a coalesced collective get tags of their own (1024)."""

STEP_BITS = PART_STEP_BITS + PART_BITS
"""Low bits of a collective tag (or arena round) that number the steps within one collective:
the sequence number above them keeps 61 - STEP_BITS = 35 bits (3.4e10 collectives)."""

P2P_TAG_BIT = 1 << 62
"""Set in every user send/recv tag, so user tags live apart from collective tags."""

MAX_TAG = P2P_TAG_BIT - 1
"""The largest tag a user may pass to send/recv (larger ones would clear :data:`P2P_TAG_BIT`)."""

CONTROL_TAG_BIT = 1 << 61
"""Set (without :data:`P2P_TAG_BIT`) in the tags of control messages: ``abandon_tag(seq)``."""

_KIND_MASK = P2P_TAG_BIT | CONTROL_TAG_BIT

SIGNATURE_STEP = (1 << PART_STEP_BITS) - 1
"""The step (within a collective, or a part of a coalesced one) of the messages carrying the
ranks' signatures, when they do not ride on the first data message."""


def part_step_base(index: int) -> int:
    """What part ``index`` of a coalesced collective adds to its steps.

    Parts get distinct steps up to :data:`PARTS`; part ``index`` then shares part
    ``index % PARTS``'s, which stays correct because parts run one after another and every
    ``(source, tag)`` stream is first in, first out. A part never reaches the sequence number's
    bits, so every tag of a collective stays its own (``discard(seq)`` drops them all).
    """
    return (index % PARTS) << PART_STEP_BITS


def op_tag(seq: int, step: int = 0) -> int:
    """The tag of message ``step`` of collective number ``seq``."""
    return (seq << STEP_BITS) | step


def tag_seq(tag: int) -> int:
    """The collective sequence number a tag belongs to."""
    return tag >> STEP_BITS


def p2p_tag(user_tag: int) -> int:
    """The transport tag of a user's send/recv ``tag``."""
    return P2P_TAG_BIT | user_tag


def is_p2p(tag: int) -> bool:
    """Whether ``tag`` is a user send/recv tag (never discarded with a collective)."""
    return bool(tag & P2P_TAG_BIT)


def abandon_tag(seq: int) -> int:
    """The tag of the control message saying that its sender gave up on collective ``seq``."""
    return CONTROL_TAG_BIT | seq


def is_control(tag: int) -> bool:
    """Whether ``tag`` is a control message's (see :func:`abandon_tag`)."""
    return tag & _KIND_MASK == CONTROL_TAG_BIT


def control_seq(tag: int) -> int:
    """The collective a control message is about."""
    return tag & (CONTROL_TAG_BIT - 1)


def describe_tag(tag: int) -> str:
    """A tag in words, for error messages: ``collective #3`` or ``send/recv tag 5``."""
    if is_p2p(tag):
        return f"send/recv tag {tag & MAX_TAG}"
    if is_control(tag):
        return f"a control message of collective #{control_seq(tag)}"
    return f"collective #{tag_seq(tag)}"


# -- collective signatures ----------------------------------------------------------------------
KINDS = (
    "",
    "allreduce",
    "reduce",
    "broadcast",
    "allgather",
    "reduce_scatter",
    "alltoall",
    "barrier",
    "gather",
    "scatter",
    "sparse_allreduce",
)
"""The collectives a signature names (by index); the algorithms' names, not the API's."""

_KIND_INDEX = {kind: index for index, kind in enumerate(KINDS)}

NUMEL_MASK = (1 << 48) - 1
REFUSED_BIT = 1 << 55
_NO_OP = 0xFF
_NO_ROOT = 0xFFFFFFFF

_REDUCE_OP_NAMES = ("SUM", "AVG", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR", "PREMUL_SUM")


class Signature(NamedTuple):
    """What a rank runs as one collective, as two u64 words (see :func:`signature`)."""

    what: int  # kind << 56 | dtype code << 48 | element count
    how: int  # reduce op << 56 | refused << 55 | root (0xFFFFFFFF: none)

    def refused(self) -> bool:
        """True if the rank refused the collective (its arguments were wrong)."""
        return bool(self.how & REFUSED_BIT)

    def kind(self) -> str:
        """The collective's name (``allreduce``...)."""
        index = self.what >> 56
        return KINDS[index] if index < len(KINDS) else f"collective kind {index}"

    def describe(self) -> str:
        """``allreduce (SUM) of 1024 float32``, ``broadcast from rank 1 of 4 int64``..."""
        kind = self.kind()
        op = self.how >> 56
        root = self.how & _NO_ROOT
        parts = [kind]
        if op != _NO_OP:
            parts.append(f"({_REDUCE_OP_NAMES[op] if op < len(_REDUCE_OP_NAMES) else op})")
        if root != _NO_ROOT:
            parts.append(f"{'onto' if kind in ('reduce', 'gather') else 'from'} rank {root}")
        if kind != "barrier":
            code = (self.what >> 48) & 0xFF
            dtype_name = str(dtype_of(code) or "?").removeprefix("torch.")
            parts.append(f"of {self.what & NUMEL_MASK} {dtype_name}")
        return " ".join(parts)


@functools.lru_cache(maxsize=1024)  # collectives repeat: a lookup costs less than building it
def signature(
    kind: str,
    dtype: torch.dtype,
    count: int,
    op: int | None = None,
    root: int | None = None,
    refused: bool = False,
) -> Signature:
    """The signature of collective ``kind`` on ``count`` elements of ``dtype`` (with reduce op
    ``op``, an int such as ``RedOpType.SUM``, and ``root``, where they apply)."""
    code = min(dtype_code(dtype), 0xFF)
    what = (_KIND_INDEX[kind] << 56) | (code << 48) | (count & NUMEL_MASK)
    how = ((_NO_OP if op is None else int(op)) << 56) | (_NO_ROOT if root is None else root)
    return Signature(what, how | REFUSED_BIT if refused else how)


def refusal(sig: Signature) -> Signature:
    """``sig`` marked as refused (the rank raises instead of running it)."""
    return Signature(sig.what, sig.how | REFUSED_BIT)


def mismatch_message(rank: int, mine: Signature, peer: int, theirs: Signature, seq: int) -> str:
    """The error of ranks that ran different collectives as collective ``seq``."""
    return (
        f"rank {rank} ran {mine.describe()} but rank {peer} ran {theirs.describe()} as "
        f"collective #{seq}: every rank must call the same collectives, in the same order, "
        "with the same arguments"
    )
