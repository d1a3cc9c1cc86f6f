"""Lazy TCP connections: a pair of ranks connects when one of them first sends to the other.

At creation a rank only listens and publishes ``token host:port`` in the store (see
:func:`~.setup.publish_lazy`); its :class:`LazyAcceptor` then serves connections for as long as
the transport lives. A send to a peer with no connection yet dials it (:meth:`LazyMesh.connect`):
it looks the peer's address up in the store, connects and shakes hands (:mod:`.handshake`). A
receive never dials: the sender does.

Both ranks of a pair may dial each other at once (each sends to the other first). The lower rank
of the pair decides which connection is kept: while it dials the higher one, it answers the
higher one's HELLO with :data:`~.handshake.BUSY_REPLY` (the higher one then waits for the lower
one's connection, which its acceptor takes), and while it has answered the higher one's HELLO
(awaiting the ACK) it does not dial. One thread per peer dials at a time; other threads wanting
the same peer wait for its connection. So each pair ends with exactly one connection.

Failures name the peer and come within the caller's deadline: a peer that never published its
address (it has not created the group) or never answers times the send out
(:class:`~pyc10d.core.errors.TransportTimeout` naming it); a peer whose listener refuses the
connection has left (it exited, crashed or closed its group): :class:`PeerFailedError`, and later
operations with it fail at once.
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Callable

from ...core.auth import load_key
from ...core.errors import DistBackendError, PeerFailedError, TransportTimeout, fresh_error
from ...core.timeouts import Deadline
from ...store import Store
from ..lazy import ThreadStore
from .conn import PeerConn
from .handshake import (
    BUSY_REPLY,
    EXTRA_PENDING,
    Acceptor,
    Identity,
    PeerConnecting,
    Reject,
)
from .setup import (
    EXTRA_BACKLOG,
    RETRY_S,
    default_advertise_host,
    dial,
    listen,
    lookup_lazy,
    publish_lazy,
)

BUSY_WAIT_S = 1.0
"""How long a rank told "busy" waits for the peer's own connection before dialling it again (the
peer's attempt may fail, e.g. on its own shorter deadline)."""

Attach = Callable[[int, socket.socket], PeerConn]
"""Makes a confirmed socket the transport's connection to a peer (raises once it is closed)."""


class LazyMesh:
    """The connections of one rank, made on first use (see the module doc).

    ``attach(peer, sock)`` makes a confirmed socket the transport's connection to ``peer``;
    ``failure()`` is the transport's error (None while it is healthy); ``lost(peer, err)``
    records that ``peer`` has left. Raises DistNetworkError if this rank cannot listen.
    """

    def __init__(
        self,
        store: Store,
        rank: int,
        world_size: int,
        bind_host: str | None,
        advertise_host: str | None,
        attach: Attach,
        failure: Callable[[], DistBackendError | None],
        lost: Callable[[int, DistBackendError], None],
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self._attach = attach
        self._failure = failure
        self._lost = lost
        self._store = ThreadStore(store)
        self._cond = threading.Condition()
        self._conns: dict[int, PeerConn] = {}
        self._dialling: set[int] = set()  # peers a thread of this rank is dialling
        self._answered: set[int] = set()  # peers whose HELLO was answered: their ACK is due
        self._addrs: dict[int, tuple[bytes, str]] = {}
        self._closed = False
        self._key = load_key()
        token = secrets.token_bytes(16)
        self._listener = listen(bind_host, world_size + EXTRA_BACKLOG)
        try:
            host = advertise_host or default_advertise_host(store, bind_host)
            publish_lazy(store, rank, self._listener, host, token)
            ident = Identity(token, rank, world_size, self._key)
            self._acceptor = LazyAcceptor(self._listener, ident, self)
            self._acceptor.start()
        except BaseException:
            self._listener.close()
            raise

    # -- what the transport asks ------------------------------------------------------------
    def connected_peers(self) -> list[int]:
        """The peers this rank has a connection to, in rank order."""
        with self._cond:
            return sorted(self._conns)

    def connect(self, peer: int, deadline: Deadline) -> PeerConn:
        """The connection to ``peer``, made now if there is none (by ``deadline``)."""
        with self._cond:
            while True:
                conn = self._conns.get(peer)
                if conn is not None:
                    return conn
                self._check_usable()
                if peer not in self._dialling and peer not in self._answered:
                    self._dialling.add(peer)
                    break
                if not self._wait(deadline, None):
                    raise self._timeout(peer, deadline, "another connection attempt to it")
        try:
            return self._dial(peer, deadline)
        finally:
            with self._cond:
                self._dialling.discard(peer)
                self._cond.notify_all()

    def close(self) -> None:
        """Stop accepting, close the listener and wake every thread waiting to connect."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._acceptor.stop()
        self._listener.close()
        self._store.close()

    # -- dialling ---------------------------------------------------------------------------
    def _dial(self, peer: int, deadline: Deadline) -> PeerConn:
        token, addr = self._lookup(peer, deadline)
        ident = Identity(token, self.rank, self.world_size, self._key)
        last = "no attempt"
        while True:
            with self._cond:
                self._check_usable()
                conn = self._conns.get(peer)  # its connection came in meanwhile
            if conn is not None:
                return conn
            if deadline.expired():
                raise self._timeout(peer, deadline, last)
            try:
                sock = dial(addr, peer, ident, deadline)
            except PeerConnecting:
                last = f"rank {peer} said it was connecting to rank {self.rank}"
                self._await_conn(peer, deadline, BUSY_WAIT_S)
                continue
            except ConnectionRefusedError as exc:
                raise self._gone(peer, addr, exc) from None
            except OSError as exc:  # socket.timeout included: the loop sees the deadline
                last = f"connecting to {addr} failed: {exc}"
                self._await_conn(peer, deadline, RETRY_S)
                continue
            return self.established(peer, sock)

    def _lookup(self, peer: int, deadline: Deadline) -> tuple[bytes, str]:
        """``peer``'s token and address (from the store the first time)."""
        found = self._addrs.get(peer)
        if found is None:
            with self._store.use() as store:
                found = lookup_lazy(store, self.rank, peer, deadline)
            self._addrs[peer] = found
        return found

    def _await_conn(self, peer: int, deadline: Deadline, cap: float) -> None:
        """Wait up to ``cap`` seconds (within ``deadline``) for a connection to ``peer``."""
        with self._cond:
            if peer not in self._conns:
                self._wait(deadline, cap)

    def _wait(self, deadline: Deadline, cap: float | None) -> bool:
        """Wait on the condition (held) for at most ``cap`` s and ``deadline``; False if the
        deadline has passed."""
        remaining = deadline.remaining()
        if remaining <= 0:
            return False
        timeout = remaining if cap is None else min(remaining, cap)
        self._cond.wait(None if timeout == float("inf") else timeout)
        return not deadline.expired()

    def _check_usable(self) -> None:
        """Raise the transport's error once it has failed or closed."""
        err = self._failure()
        if err is None and self._closed:
            err = DistBackendError(f"TCPTransport of rank {self.rank} was closed")
        if err is not None:
            raise fresh_error(err)

    def _timeout(self, peer: int, deadline: Deadline, why: str) -> TransportTimeout:
        return TransportTimeout(
            f"rank {peer} to accept a connection from rank {self.rank} ({why})",
            deadline.seconds,
            (peer,),
        )

    def _gone(self, peer: int, addr: str, exc: OSError) -> PeerFailedError:
        err = PeerFailedError(
            peer,
            f"it no longer listens at {addr} ({exc.strerror or exc}): it exited, crashed or "
            f"closed its group before rank {self.rank} first connected to it",
        )
        self._lost(peer, err)
        return err

    # -- what both sides call ---------------------------------------------------------------
    def established(self, peer: int, sock: socket.socket) -> PeerConn:
        """``sock`` is confirmed as the connection to ``peer``: hand it to the transport."""
        with self._cond:
            self._answered.discard(peer)
            self._cond.notify_all()
            if peer in self._conns:  # cannot happen (the lower rank decides): keep the first
                sock.close()
                raise DistBackendError(f"rank {peer} connected twice to rank {self.rank}")
            conn = self._attach(peer, sock)  # closes the socket if it raises
            self._conns[peer] = conn
            return conn

    # -- what the acceptor asks -------------------------------------------------------------
    def admit(self, peer: int) -> None:
        """Answer ``peer``'s HELLO, or raise Reject (see the module doc for the rule)."""
        if not 0 <= peer < self.world_size or peer == self.rank:
            raise Reject(f"it says it is rank {peer}, which is not a peer here")
        with self._cond:
            if self._closed:
                raise Reject("this rank's transport is closing")
            if self.rank < peer and (peer in self._dialling or peer in self._conns):
                # this rank's connection to it is the one (made, or being made): it waits for it
                raise Reject(f"rank {self.rank} is connecting to it", BUSY_REPLY, quiet=True)
            if peer in self._conns:
                raise Reject(f"it says it is rank {peer}, which is already connected")
            self._answered.add(peer)

    def unanswered(self, peer: int) -> None:
        """``peer``'s answered connection was dropped before its ACK."""
        with self._cond:
            self._answered.discard(peer)
            self._cond.notify_all()


class LazyAcceptor(Acceptor):
    """Accepts peers' connections for as long as the transport lives, as ``mesh`` decides."""

    def __init__(self, listener: socket.socket, ident: Identity, mesh: LazyMesh) -> None:
        super().__init__(listener, ident, set(), Deadline(0))
        self._mesh = mesh
        self._max_pending = ident.world_size + EXTRA_PENDING

    def _running(self) -> bool:
        return not self._stopped

    def _admit(self, peer: int) -> None:
        self._mesh.admit(peer)

    def _established(self, peer: int, sock: socket.socket) -> None:
        try:
            self._mesh.established(peer, sock)
        except DistBackendError:
            pass  # the transport closed meanwhile (the socket is closed)

    def _abandoned(self, peer: int) -> None:
        self._mesh.unanswered(peer)


__all__ = ["BUSY_WAIT_S", "LazyAcceptor", "LazyMesh"]
