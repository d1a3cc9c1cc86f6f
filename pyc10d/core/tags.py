"""Message tags: how a collective's messages and a user's send/recv tags share one tag space.

A collective's message ``step`` of collective number ``seq`` is tagged ``seq << STEP_BITS | step``;
the shared-memory arena numbers its rounds the same way. User point-to-point tags carry
:data:`P2P_TAG_BIT`, so they never collide with a collective's (torch's tags are plain ints).
"""

from __future__ import annotations

STEP_BITS = 24
"""Low bits of a collective tag (or arena round) that number the steps within one collective."""

P2P_TAG_BIT = 1 << 62
"""Set in every user send/recv tag, so user tags live apart from collective tags."""

MAX_TAG = P2P_TAG_BIT - 1
"""The largest tag a user may pass to send/recv (larger ones would clear :data:`P2P_TAG_BIT`)."""


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
