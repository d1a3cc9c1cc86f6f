"""The client side of one TCPStore connection: send a frame, receive a reply frame, fast.

The socket is non-blocking. A reply is first awaited by briefly re-trying ``recv`` (the server
usually answers within tens of microseconds, and a sleep/wake-up costs more than that), then by
blocking in ``poll`` until the deadline. The spin adapts: when replies stop arriving within it
(an oversubscribed machine, where spinning only steals the server's CPU) it shrinks to nothing,
probing again now and then.
"""

from __future__ import annotations

import select
import socket
import time

from .protocol import ProtocolError, Status, decode, frame_size

SPIN_MAX = 48  # non-blocking recv attempts before blocking in poll (~50 µs)
SPIN_PROBE = 8  # spin tried again after this many replies that needed no spin budget


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
        self._spin = SPIN_MAX
        self._since_probe = 0

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def pending_error(self) -> str | None:
        """After a failed send: the message of an ERROR reply the server sent before it hung
        up (e.g. naming a limit the request broke), if one arrived whole."""
        buf = self._inbuf
        try:
            while size := self.sock.recv_into(self._chunk):
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

    @staticmethod
    def _wait(poller: select.poll, deadline: float, seconds: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{round(seconds * 1000)}ms")
        poller.poll(None if left == float("inf") else max(1, int(left * 1000)))

    def send(self, frame: bytes, seconds: float) -> None:
        """Send all of ``frame`` within ``seconds`` (TimeoutError otherwise)."""
        try:
            sent = self.sock.send(frame)
        except BlockingIOError:
            sent = 0
        if sent == len(frame):
            return
        view = memoryview(frame)[sent:]
        deadline = time.monotonic() + seconds
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                self._wait(self._writable, deadline, seconds)

    def _probe_spins(self) -> int:
        """The spin budget of a reply while spinning is off: a probe every ``SPIN_PROBE``."""
        self._since_probe += 1
        if self._since_probe >= SPIN_PROBE:
            self._since_probe = 0
            return SPIN_PROBE
        return 0

    def _wait_readable(self, deadline: float | None, seconds: float) -> float:
        """Block in ``poll`` until data comes (the spin is over); returns the deadline it set."""
        if deadline is None:
            self._spin //= 2  # spun in vain: spin less next time
            deadline = time.monotonic() + seconds
        self._wait(self._readable, deadline, seconds)
        return deadline

    def receive(self, seconds: float) -> tuple[int, int, list[bytes]]:
        """Receive one reply frame ``(status, num, args)`` within ``seconds``."""
        buf = self._inbuf
        spins = self._spin
        if not spins:
            spins = self._probe_spins()
        deadline = None
        needed = frame_size(buf)
        while True:
            if len(buf) >= needed:
                needed = frame_size(buf)  # the header was incomplete before: now it is known
                if len(buf) >= needed:
                    frame = bytes(buf[:needed])
                    del buf[:needed]
                    reply = decode(frame, 0)
                    if reply is None:  # pragma: no cover - frame_size said it is complete
                        raise ProtocolError("incomplete reply frame")
                    if deadline is None and spins:  # answered while spinning: spinning pays
                        self._spin = SPIN_MAX
                    return reply[1], reply[2], reply[3]
            try:
                size = self.sock.recv_into(self._chunk)
            except BlockingIOError:
                if spins:
                    spins -= 1
                    continue
                deadline = self._wait_readable(deadline, seconds)
                continue
            if not size:
                raise ConnectionError("the server closed the connection")
            buf += self._chunk_view[:size]
