"""The client side of one TCPStore connection: send a frame, receive a reply frame, fast.

The socket is blocking, with the kernel enforcing the timeouts (``SO_SNDTIMEO`` and
``SO_RCVTIMEO``, set only when they change): a request costs one ``send`` and, usually, one
``recv_into`` (no ``poll`` before it, and no spinning: on a busy host a spinning client steals the
CPU the server needs).
"""

from __future__ import annotations

import math
import socket
import struct
import time

from .protocol import HEADER, ProtocolError, Status, decode, frame_size

RECV_SIZE = 1 << 16
_TIMEVAL = struct.Struct("@ll")  # struct timeval, for SO_RCVTIMEO / SO_SNDTIMEO


def _timeval(seconds: float) -> bytes:
    """``seconds`` as a socket timeout (infinite: 0, which the kernel reads as no timeout)."""
    if math.isinf(seconds):
        return _TIMEVAL.pack(0, 0)
    whole = int(seconds)
    micros = min(999_999, round((seconds - whole) * 1e6))
    return _TIMEVAL.pack(whole, micros if whole or micros else 1)  # (0, 0) would be no timeout


class ClientConnection:
    """A connected, blocking socket speaking the store protocol."""

    def __init__(self, sock: socket.socket) -> None:
        sock.settimeout(None)  # blocking: the kernel times the calls out (see the module doc)
        self.sock = sock
        self._inbuf = bytearray()
        self._chunk = bytearray(RECV_SIZE)
        self._chunk_view = memoryview(self._chunk)
        self._send_s = self._recv_s = -1.0  # the timeouts set on the socket (-1: none yet)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def pending_error(self) -> str | None:
        """After a failed send: the message of an ERROR reply the server sent before it hung
        up (e.g. naming a limit the request broke), if one arrived whole."""
        buf = self._inbuf
        try:
            while size := self.sock.recv_into(self._chunk, 0, socket.MSG_DONTWAIT):
                buf += self._chunk_view[:size]
        except OSError:
            pass
        if len(buf) < 4 or len(buf) < frame_size(buf):
            return None
        try:
            reply = decode(bytes(buf[: frame_size(buf)]), 0)
        except ProtocolError:
            return None
        if reply is None or reply[1] != Status.ERROR or not reply[3]:
            return None
        return reply[3][0].decode(errors="replace")

    def send(self, frame: bytes, seconds: float) -> None:
        """Send all of ``frame`` within ``seconds`` (TimeoutError otherwise)."""
        if self._send_s != seconds:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(seconds))
            self._send_s = seconds
        try:
            sent = self.sock.send(frame)
        except BlockingIOError:
            sent = 0
        if sent != len(frame):
            self._send_rest(memoryview(frame)[sent:], seconds)

    def _send_rest(self, view: memoryview, seconds: float) -> None:
        """The rest of a frame the socket did not take at once."""
        deadline = time.monotonic() + seconds
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                pass
            if view and time.monotonic() >= deadline:
                raise TimeoutError(f"{round(seconds * 1000)}ms")

    def receive(self, seconds: float) -> tuple[int, int, list[bytes]]:
        """Receive one reply frame ``(status, num, args)`` within ``seconds``."""
        if self._recv_s != seconds:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(seconds))
            self._recv_s = seconds
        if not self._inbuf:  # the common case: the whole reply in one read
            try:
                size = self.sock.recv_into(self._chunk)
            except BlockingIOError:
                raise TimeoutError(f"{round(seconds * 1000)}ms") from None
            if size >= HEADER.size and frame_size(self._chunk) == size:
                _, status, num, args = decode(self._chunk_view[:size].tobytes(), 0)  # type: ignore[misc]
                return status, num, args
            if not size:
                raise ConnectionError("the server closed the connection")
            self._inbuf += self._chunk_view[:size]
        return self._receive_rest(seconds)

    def _receive_rest(self, seconds: float) -> tuple[int, int, list[bytes]]:
        """A reply that came in pieces (or behind another): read until it is whole."""
        buf = self._inbuf
        deadline = time.monotonic() + seconds
        while len(buf) < 4 or len(buf) < frame_size(buf):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{round(seconds * 1000)}ms")
            try:
                size = self.sock.recv_into(self._chunk)
            except BlockingIOError:
                raise TimeoutError(f"{round(seconds * 1000)}ms") from None
            if not size:
                raise ConnectionError("the server closed the connection")
            buf += self._chunk_view[:size]
        needed = frame_size(buf)
        reply = decode(bytes(buf[:needed]), 0)
        del buf[:needed]
        if reply is None:  # pragma: no cover - frame_size said it is complete
            raise ProtocolError("incomplete reply frame")
        return reply[1], reply[2], reply[3]
