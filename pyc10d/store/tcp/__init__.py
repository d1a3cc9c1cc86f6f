"""TCPStore internals: the wire protocol and the selectors-based server."""
