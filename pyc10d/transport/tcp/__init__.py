"""TCP transport (any host): a full mesh of sockets, one receiver thread demultiplexing frames.

Modules: :mod:`.transport` (:class:`TCPTransport`), :mod:`.conn` (one peer's socket and framing),
:mod:`.receiver` (the receiving thread), :mod:`.setup` (listening, publishing and dialling) and
:mod:`.handshake` (identifying and authenticating each connection, accepting them concurrently).
"""

from .transport import TCPTransport

__all__ = ["TCPTransport"]
