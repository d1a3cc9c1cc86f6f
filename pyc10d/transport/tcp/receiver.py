"""The receiver thread of a TCP transport: one epoll loop reading every peer's socket.

Each readable socket is read as far as it goes without blocking. Headers and small payloads are
read into the connection's scratch buffer and delivered from there; a payload that continues past
what has arrived streams straight into the posted receive's buffer (or a new buffer when none is
posted yet), so big messages are read with no extra copy and peers are served in turn.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable

from ...core.errors import DistBackendError, PeerFailedError
from ..base import HEADER, HEADER_SIZE
from ..mailbox import CANCELLED, FAILED, FILLING, Mailbox, PendingRecv
from ..receiver_thread import ReceiverThread
from .conn import CLOSE_TAG, SCRATCH_SIZE, PeerConn

ACCEPT_GRACE_S = 0.005  # how long a large unexpected payload waits for its receive to be posted
_unpack_header = HEADER.unpack_from


class Receiver(ReceiverThread):
    """Reads all ``conns`` on a daemon thread and feeds ``mailbox``; ``on_fail`` is called
    (on that thread) if the thread itself fails (a bug), which fails the transport."""

    def __init__(
        self,
        name: str,
        conns: list[PeerConn],
        mailbox: Mailbox,
        on_fail: Callable[[], None],
    ) -> None:
        self._conns = conns
        self._mb = mailbox
        self._on_fail = on_fail
        self._by_fd = {c.fd: c for c in conns}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._fd_lock = threading.Lock()
        self._ep = select.epoll()
        for c in conns:
            self._ep.register(c.fd, select.EPOLLIN)
        self._ep.register(self._wake_r, select.EPOLLIN)
        self._ready: list[PendingRecv] = []  # settled receives to wake before blocking again
        self._stop_error: DistBackendError | None = None
        super().__init__(name)

    def wake(self) -> None:
        """Make the thread look at cancelled receives (and its stop request) soon."""
        with self._fd_lock:
            if self._wake_w < 0:
                return
            try:
                os.write(self._wake_w, b"!")
            except BlockingIOError:  # the pipe is full: a wake-up is pending anyway
                pass

    def add(self, conn: PeerConn) -> None:
        """Read ``conn`` too, from now on (a connection made after the thread started: lazy
        setup). The caller has appended it to the ``conns`` list this receiver was given; the
        thread only looks ``_by_fd`` up, so entering it before registering its descriptor means
        it is known by the time epoll reports it."""
        self._by_fd[conn.fd] = conn
        self._ep.register(conn.fd, select.EPOLLIN)

    def stop(self, err: DistBackendError, after_exit: Callable[[], None]) -> None:
        """Stop the thread, failing whatever still waits with ``err``; then run ``after_exit``.

        From another thread this joins the receiver and runs ``after_exit`` itself; on the
        receiver thread (a garbage-collection finalizer) the thread runs it as it exits.
        """
        self._stop_error = err
        self._stop_thread(after_exit)

    def close_fds(self) -> None:
        """Close the epoll object and the wake-up pipe (after the thread has exited)."""
        self._ep.close()
        with self._fd_lock:
            fds, self._wake_r, self._wake_w = (self._wake_r, self._wake_w), -1, -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    # -- the thread ---------------------------------------------------------------------------
    def _crashed(self, exc: BaseException) -> None:
        self._fail(DistBackendError(f"TCPTransport receiver thread crashed: {exc!r}"))
        self._on_fail()

    def _exiting(self) -> None:
        """Nothing left to settle: whatever ended the loop failed the receives being filled."""

    def _loop(self) -> None:
        poll = self._ep.poll
        by_fd = self._by_fd
        wake_fd = self._wake_r
        service = self._service
        ready = self._ready
        while True:
            if ready:  # woken only now, so that they do not wait for this thread's GIL
                for r in ready:
                    r.wake()
                ready.clear()
            for fd, _ in poll():
                if fd == wake_fd:
                    if self._on_wake():
                        return
                    continue
                conn = by_fd.get(fd)
                if conn is not None:
                    service(conn)

    def _service(self, conn: PeerConn) -> None:
        """Read what ``conn`` has; handle its end (a lost peer fails only what needs it)."""
        try:
            if self._read(conn):
                return
            reason = None
        except OSError as exc:
            reason = f"connection error: {exc}"
        self._lost(conn, reason)

    def _on_wake(self) -> bool:
        """Drain the wake-up pipe; stop (True) or let go of cancelled receives (False)."""
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        if self._stop_error is not None:
            self._fail(self._stop_error)
            return True
        with self._mb.lock:
            for c in self._conns:
                r = c.dest
                if r is not None and r.cancelled and r.state == FILLING:
                    r.finish(CANCELLED)
                    c.dest = None
                    c.body = None
                    c.drop = c.need - c.got
        return False

    def _lost(self, conn: PeerConn, reason: str | None) -> None:
        """Handle EOF or an error on ``conn``: only what needs its peer fails.

        The peer's messages read so far stay deliverable: a rank that sent its last message of
        a collective and then exited does not fail its peers' part of it (they may still be
        waiting for other ranks). Receives that only this peer can serve fail, and so do sends
        to it; one of its messages cut short fails the receive it was filling.
        """
        self._ep.unregister(conn.fd)
        del self._by_fd[conn.fd]
        mid_message = conn.body is not None or conn.drop or conn.have
        lost = not conn.goodbye or bool(mid_message)
        if not lost:
            err = PeerFailedError(conn.rank, "it closed its transport")
        else:
            if conn.broken is not None:
                reason = conn.broken
            elif reason is None:
                reason = "connection closed unexpectedly (did the process exit or crash?)"
            err = PeerFailedError(conn.rank, reason)
            conn.lose(reason)  # wakes a send blocked on this socket
        mb = self._mb
        with mb.lock:
            r = conn.dest
            if r is not None and r.state == FILLING:
                r.finish(FAILED, err)
            conn.dest = conn.body = conn.pending = None
            conn.drop = conn.have = 0
            mb.peer_closed(conn.rank, err, lost)

    def _fail(self, err: DistBackendError) -> None:
        """Fail the mailbox with ``err`` and every receive being filled (this thread only)."""
        mb = self._mb
        with mb.lock:
            mb.fail(err)
            for c in self._conns:
                r = c.dest
                if r is not None and r.state == FILLING:
                    r.finish(FAILED, mb.error)
                c.dest = None
                c.body = None
        for r in self._ready:
            r.wake()
        self._ready.clear()

    # -- reading ------------------------------------------------------------------------------
    def _read(self, c: PeerConn) -> bool:
        """Read ``c`` until it would block; False at end of stream.

        Each step reads into the streamed payload, the bytes being dropped, or the scratch
        buffer, and returns None to go on, True when the socket has no more, False at its end.
        """
        try:
            while True:
                if c.pending is not None:
                    self._redirect(c)
                if c.body is not None:
                    status = self._read_body(c)
                elif c.drop:
                    status = _read_dropped(c)
                else:
                    status = self._read_scratch(c)
                if status is not None:
                    return status
        except BlockingIOError:
            return True

    def _read_body(self, c: PeerConn) -> bool | None:
        """Stream into the payload's buffer; complete it once whole."""
        body, got = c.body, c.got
        assert body is not None
        want = c.need - got
        n = c.sock.recv_into(body[got:] if got else body, want)
        if not n:
            return False
        c.got = got + n
        if n < want:
            return True
        self._complete(c)
        return None

    def _read_scratch(self, c: PeerConn) -> bool | None:
        """Read headers and small payloads into the scratch buffer and deliver them."""
        have = c.have
        want = SCRATCH_SIZE - have
        n = c.sock.recv_into(c.sview[have:] if have else c.scratch, want)
        if not n:
            return False
        self._parse(c, have + n)
        return True if n < want else None

    def _parse(self, c: PeerConn, end: int) -> None:
        """Deliver the messages in ``c.scratch[:end]``; start streaming an incomplete one."""
        scratch = c.scratch
        sview = c.sview
        src = c.rank
        mb = self._mb
        pos = 0
        while end - pos >= HEADER_SIZE:
            tag, size = _unpack_header(scratch, pos)
            pos += HEADER_SIZE
            if end - pos < size:
                self._start(c, tag, size, sview[pos:end])
                c.have = 0
                return
            if tag == CLOSE_TAG:
                c.goodbye = True
                continue
            with mb.lock:
                r = mb.offer(src, tag, sview[pos : pos + size])
            if r is not None:
                self._ready.append(r)
            pos += size
        rest = end - pos
        if rest and pos:
            scratch[:rest] = sview[pos:end]  # pos >= HEADER_SIZE > rest: no overlap
        c.have = rest

    def _start(self, c: PeerConn, tag: int, size: int, head: memoryview) -> None:
        """Begin a ``size``-byte payload whose first bytes are ``head``."""
        if self._ready:  # accept() may wait for a receive that only their waiters will post
            for r in self._ready:
                r.wake()
            self._ready.clear()
        view, dest, pending, failed = self._mb.accept(c.rank, tag, size, ACCEPT_GRACE_S)
        if failed is not None:
            self._ready.append(failed)
        if dest is not None:
            c.dest = dest
        if pending is not None:
            c.pending = pending
        n = len(head)
        if view is None:
            c.drop = size - n
            return
        view[:n] = head
        c.body = view
        c.got = n
        c.need = size
        c.tag = tag

    def _redirect(self, c: PeerConn) -> None:
        """A receive posted while its message streams into a new buffer takes the stream over:
        the bytes so far are copied into it, the rest lands there directly."""
        mb = self._mb
        with mb.lock:
            r = mb.match(c.rank, c.tag)
            if r is None:
                return
            view = mb.claim(r, c.rank, c.tag, c.need)
        if view is None:  # its size is wrong: the receive failed
            self._ready.append(r)
            return
        assert c.body is not None
        view[: c.got] = c.body[: c.got]
        c.body = view
        c.dest = r
        c.pending = None

    def _complete(self, c: PeerConn) -> None:
        """The payload being streamed has fully arrived: finish its receive or buffer it."""
        r = self._mb.stream_done(c.rank, c.tag, c.dest, c.pending)
        if r is not None:
            self._ready.append(r)
        c.body = None
        c.dest = None
        c.pending = None


def _read_dropped(c: PeerConn) -> bool | None:
    """Read and throw away bytes of a payload nobody will receive (a discarded collective)."""
    want = min(c.drop, SCRATCH_SIZE)
    n = c.sock.recv_into(c.scratch, want)
    if not n:
        return False
    c.drop -= n
    return True if n < want else None
