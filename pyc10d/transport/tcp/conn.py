"""One TCP connection of the mesh: the wire header, the locked sending side, receive state.

Every message is a header (tag u64, length u64, little-endian) followed by the payload. Sockets
are non-blocking: a sender writes what fits and polls for room until its deadline, the receiver
thread (:mod:`.receiver`) reads what has arrived.
"""

from __future__ import annotations

import math
import select
import socket
import threading
from collections.abc import Callable

from ...core.errors import DistBackendError, PeerFailedError, TransportTimeout
from ...core.timeouts import Deadline
from ..base import HEADER, HEADER_SIZE
from ..mailbox import PendingRecv, lock_timeout

CLOSE_TAG = (1 << 64) - 1  # a peer's last message before a clean close (a "goodbye")
SCRATCH_SIZE = 256 * 1024  # per-connection buffer for headers and small payloads
DRAIN_READS = 64  # at most this many reads of unread data when closing a socket
_POLLOUT = select.POLLOUT
_POLLIN = select.POLLIN
_NOSIGNAL = socket.MSG_NOSIGNAL


class PeerConn:
    """The socket to ``rank`` with its send lock; the receiver thread keeps its read state here."""

    __slots__ = (
        "_fail_fd",
        "_failure",
        "_poll",
        "body",
        "broken",
        "closing",
        "dest",
        "drop",
        "fd",
        "goodbye",
        "got",
        "have",
        "need",
        "pending",
        "rank",
        "scratch",
        "send_lock",
        "sock",
        "sview",
        "tag",
    )

    def __init__(
        self,
        rank: int,
        sock: socket.socket,
        fail_fd: int,
        failure: Callable[[], DistBackendError],
    ) -> None:
        self.rank = rank
        self.sock = sock
        self.fd = sock.fileno()
        self.send_lock = threading.Lock()
        self.broken: str | None = None  # why this side broke the stream, if it did
        self.closing = False  # set (under the send lock) when the transport closes
        self._fail_fd = fail_fd
        self._failure = failure
        self._poll = select.poll()
        self._poll.register(self.fd, _POLLOUT)
        self._poll.register(fail_fd, _POLLIN)
        # Read state, owned by the receiver thread.
        self.scratch = bytearray(SCRATCH_SIZE)
        self.sview = memoryview(self.scratch)
        self.have = 0  # bytes of an incomplete header at the start of ``scratch``
        self.body: memoryview | None = None  # where the current payload streams to
        self.got = 0
        self.need = 0
        self.tag = 0
        self.dest: PendingRecv | None = None  # the claimed receive ``body`` belongs to
        self.pending: bytearray | None = None  # an unexpected payload being read
        self.drop = 0  # payload bytes left to read and throw away
        self.goodbye = False

    def send(self, tag: int, data: memoryview, deadline: Deadline) -> None:
        """Write one message; raises TransportTimeout, PeerFailedError or the transport error."""
        lock = self.send_lock
        if not lock.acquire(False) and not lock.acquire(True, lock_timeout(deadline.remaining())):
            raise TransportTimeout(f"sending message {tag} to rank {self.rank}", deadline.seconds)
        try:
            if self.closing:
                raise self._failure()
            if self.broken is not None:
                raise PeerFailedError(self.rank, self.broken)
            header = HEADER.pack(tag, len(data))
            try:
                sent = self.sock.sendmsg((header, data), (), _NOSIGNAL)
            except BlockingIOError:
                sent = 0
            if sent != HEADER_SIZE + len(data):
                self._send_rest(tag, header, data, sent, deadline)
        except OSError as exc:
            raise PeerFailedError(self.rank, self.broken or f"send failed: {exc}") from None
        finally:
            lock.release()

    def _send_rest(
        self, tag: int, header: bytes, data: memoryview, sent: int, deadline: Deadline
    ) -> None:
        """Finish a partly written message, polling for room until ``deadline``."""
        total = HEADER_SIZE + len(data)
        while sent < total:
            remaining = deadline.remaining()
            ms = None if math.isinf(remaining) else math.ceil(remaining * 1000)
            events = self._poll.poll(ms)
            if not events:
                if sent:
                    self.break_stream(f"a send to it timed out mid-message after {sent} bytes")
                what = f"sending message {tag} to rank {self.rank}"
                raise TransportTimeout(what, deadline.seconds)
            if any(fd == self._fail_fd for fd, _ in events):
                if sent:
                    self.break_stream("the transport failed or closed during a send")
                raise self._failure()
            try:
                if sent < HEADER_SIZE:
                    sent += self.sock.sendmsg((header[sent:], data), (), _NOSIGNAL)
                else:
                    sent += self.sock.send(data[sent - HEADER_SIZE :], _NOSIGNAL)
            except BlockingIOError:
                continue

    def break_stream(self, reason: str) -> None:
        """Give up on a stream left mid-message: shut the socket so both sides fail."""
        self.broken = reason
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def lose(self, reason: str) -> None:
        """The peer is gone (``reason``): later sends to it fail, and one blocked on the socket
        wakes up (receiver thread, once the socket has nothing left to read)."""
        if self.broken is None:
            self.broken = reason
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def say_goodbye(self, seconds: float) -> None:
        """Best effort: send the goodbye message and shut down writing, within ``seconds``."""
        if not self.send_lock.acquire(True, seconds):
            return
        try:
            self.closing = True
            if self.broken is None:
                header = HEADER.pack(CLOSE_TAG, 0)
                poll = select.poll()
                poll.register(self.fd, _POLLOUT)
                sent = 0
                deadline = Deadline(seconds)
                while sent < HEADER_SIZE and poll.poll(deadline.remaining() * 1000):
                    try:
                        sent += self.sock.send(header[sent:], _NOSIGNAL)
                    except BlockingIOError:
                        continue
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            self.send_lock.release()

    def close(self, seconds: float) -> None:
        """Wait (up to ``seconds``) for a send in progress, drop what is left unread (so that
        closing sends no reset), and close the socket."""
        locked = self.send_lock.acquire(True, seconds)
        self.closing = True
        try:
            for _ in range(DRAIN_READS):
                if not self.sock.recv_into(self.scratch):
                    break
        except OSError:
            pass
        self.sock.close()
        if locked:
            self.send_lock.release()
