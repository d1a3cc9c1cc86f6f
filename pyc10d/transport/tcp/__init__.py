"""TCP transport (any host): a full mesh of sockets, one receiver thread demultiplexing frames.

Modules: :mod:`.transport` (:class:`TCPTransport`), :mod:`.conn` (one peer's socket and framing),
:mod:`.receiver` (the receiving thread) and :mod:`.setup` (listening, dialling and the handshake).
"""

from .transport import TCPTransport

__all__ = ["TCPTransport"]
