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
from .factory import make_transport, transport_mode
from .hybrid import HybridTransport
from .tcp import TCPTransport

__all__ = [
    "P2P_TAG_BIT",
    "STEP_BITS",
    "Buffer",
    "HybridTransport",
    "PeerFailedError",
    "TCPTransport",
    "Transport",
    "TransportTimeout",
    "make_transport",
    "op_tag",
    "p2p_tag",
    "tag_seq",
    "transport_mode",
]
