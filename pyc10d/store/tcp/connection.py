"""The client side of one TCPStore connection: send a frame, receive a reply frame, fast.

The socket is non-blocking. A reply is first awaited by briefly re-trying ``recv`` (the server
usually answers within tens of microseconds, and a sleep/wake-up costs more than that), then by
blocking in ``poll`` until the deadline.
"""

from __future__ import annotations

import select
import socket
import time

from .protocol import decode

SPIN_TRIES = 48  # non-blocking recv attempts before blocking in poll (~50 µs)


class ClientConnection:
    """A connected, non-blocking socket speaking the store protocol."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._inbuf = bytearray()
        self._chunk = bytearray(1 << 16)
        self._chunk_view = memoryview(self._chunk)
        self._readable = select.poll()
        self._readable.register(sock, select.POLLIN)
        self._writable = select.poll()
        self._writable.register(sock, select.POLLOUT)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    @staticmethod
    def _wait(poller: select.poll, deadline: float, seconds: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{round(seconds * 1000)}ms")
        poller.poll(None if left == float("inf") else max(1, int(left * 1000)))

    def send(self, frame: bytes, seconds: float) -> None:
        """Send all of ``frame`` within ``seconds`` (TimeoutError otherwise)."""
        view = memoryview(frame)
        deadline = time.monotonic() + seconds
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                self._wait(self._writable, deadline, seconds)

    def receive(self, seconds: float) -> tuple[int, int, list[bytes]]:
        """Receive one reply frame ``(status, num, args)`` within ``seconds``."""
        buf = self._inbuf
        spins = SPIN_TRIES
        deadline = None
        while True:
            reply = decode(buf, 0)
            if reply is not None:
                end, status, num, args = reply
                del buf[:end]
                return status, num, args
            try:
                size = self.sock.recv_into(self._chunk)
            except BlockingIOError:
                if spins:
                    spins -= 1
                    continue
                if deadline is None:
                    deadline = time.monotonic() + seconds
                self._wait(self._readable, deadline, seconds)
                continue
            if not size:
                raise ConnectionError("the server closed the connection")
            buf += self._chunk_view[:size]
