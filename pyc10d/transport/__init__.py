"""Layer 2 — transports: tagged point-to-point byte messages between the ranks of a group.

:mod:`.base` is the interface; :mod:`.tcp` (any host) and :mod:`.shm` (same host) implement it,
:mod:`.hybrid` mixes them in one group, and :mod:`.factory` picks one (``PYC10D_TRANSPORT``).
"""

from .base import Buffer, Transport
from .factory import make_transport, transport_mode
from .hybrid import HybridTransport
from .tcp import TCPTransport

__all__ = [
    "Buffer",
    "HybridTransport",
    "TCPTransport",
    "Transport",
    "make_transport",
    "transport_mode",
]
