"""TCPStore internals: the wire protocol (with its frame cap), the epoll server (with its limits
and authentication gate), the client connection, and the join of ``wait_for_workers``."""
