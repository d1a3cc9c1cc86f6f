"""Layer 2 — transports: tagged point-to-point byte messages between the ranks of a group."""

from .base import (
    P2P_TAG_BIT,
    STEP_BITS,
    Buffer,
    PeerFailedError,
    Transport,
    TransportTimeout,
    op_tag,
    p2p_tag,
    tag_seq,
)
from .tcp import TCPTransport

__all__ = [
    "P2P_TAG_BIT",
    "STEP_BITS",
    "Buffer",
    "PeerFailedError",
    "TCPTransport",
    "Transport",
    "TransportTimeout",
    "op_tag",
    "p2p_tag",
    "tag_seq",
]
