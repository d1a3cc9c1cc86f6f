"""Building the full TCP mesh of a group through the store.

Every rank listens on an ephemeral port and publishes ``host:port`` under ``transport/addr/{rank}``;
rank 0 publishes a random group nonce under ``transport/nonce``. Once every rank has published,
rank ``i`` accepts a connection from each ``j > i`` on a thread of its own (any number of
handshakes at once, see :mod:`.handshake`) while it connects to each ``j < i`` in turn. Every
connection is identified (group nonce, rank, world size; with ``PYC10D_AUTH_KEY`` after an HMAC
challenge-response) and confirmed before it is taken for a peer; strays are logged and dropped.

Lazily (see :mod:`.lazy`), a rank only listens and publishes ``token host:port`` under
``transport/lazy/{rank}`` (its own random token stands in for the group nonce, so its acceptor
never reads the store); peers look the address up when they first need it and :func:`dial` it.
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import socket
import time

from ...core.auth import load_key
from ...core.errors import DistBackendError, DistNetworkError, DistStoreError, TransportTimeout
from ...core.timeouts import Deadline, format_ms
from ...store import Store, TCPStore
from .handshake import HELLO, Acceptor, Identity, shake_hands, tune

ADDR_KEY = "transport/addr/{}"
NONCE_KEY = "transport/nonce"
LAZY_ADDR_KEY = "transport/lazy/{}"  # "token-hex host:port" of a rank that connects lazily
RETRY_S = 0.05
EXTRA_BACKLOG = 64  # listen backlog beyond one per peer (strays must not crowd peers out)
_WILDCARDS = ("", "0.0.0.0", "::")


def default_advertise_host(store: Store, bind_host: str | None = None) -> str:
    """The address other ranks should use to reach this one.

    A specific ``bind_host`` is used as is. With a TCPStore (possibly wrapped) on a loopback
    host: ``127.0.0.1``; otherwise the local address of the route to the store's host, falling
    back to ``gethostbyname(gethostname())``.
    """
    if bind_host not in (None, *_WILDCARDS):
        return bind_host
    base = store
    while not isinstance(base, TCPStore) and hasattr(base, "underlying_store"):
        base = base.underlying_store
    if isinstance(base, TCPStore):
        if _is_loopback(base.host):
            return "127.0.0.1"
        local = _route_address(base.host, base.port)
        if local is not None:
            return local
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _is_loopback(host: str) -> bool:
    """True if ``host`` names (or resolves to) a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def _route_address(host: str, port: int) -> str | None:
    """The local IP of the interface that reaches ``host`` (a UDP connect sends no packet)."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(addr)
            local = probe.getsockname()[0]
    except OSError:
        return None
    return None if local in _WILDCARDS else local


def listen(bind_host: str | None, backlog: int) -> socket.socket:
    """A socket listening on an ephemeral port of ``bind_host`` (all IPv4 interfaces if None)."""
    host = bind_host or "0.0.0.0"
    family, _, _, _, addr = socket.getaddrinfo(
        host, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tune(sock)
        sock.bind(addr)
        sock.listen(max(backlog, 1))
    except OSError as exc:
        sock.close()
        raise DistNetworkError(f"TCPTransport could not listen on {host}: {exc}") from exc
    return sock


def build_mesh(
    store: Store,
    rank: int,
    world_size: int,
    deadline: Deadline,
    bind_host: str | None,
    advertise_host: str | None,
) -> dict[int, socket.socket]:
    """Connect ``rank`` to every other rank; return the sockets by peer rank."""
    key = load_key()
    listener = listen(bind_host, world_size + EXTRA_BACKLOG)
    socks: dict[int, socket.socket] = {}
    acceptor: Acceptor | None = None
    try:
        host = advertise_host or default_advertise_host(store, bind_host)
        port = listener.getsockname()[1]
        if rank == 0:
            store.set(NONCE_KEY, secrets.token_bytes(16))
        store.set(ADDR_KEY.format(rank), f"{host}:{port}")
        addrs, nonce = _gather(store, rank, world_size, deadline)
        ident = Identity(nonce, rank, world_size, key)
        acceptor = Acceptor(listener, ident, set(range(rank + 1, world_size)), deadline)
        acceptor.start()
        for peer in range(rank):
            socks[peer] = _connect(addrs[peer], peer, ident, deadline, socks)
        socks.update(acceptor.result())
        if len(socks) != world_size - 1:
            raise _missing_error(rank, world_size, deadline, socks, "no connection came")
    except BaseException:
        if acceptor is not None:
            acceptor.stop()
        for sock in socks.values():
            sock.close()
        raise
    finally:
        listener.close()
    return socks


def _missing_error(rank: int, world_size: int, deadline: Deadline, socks: dict, why: str):
    """The DistBackendError of a setup that ran out of time, naming the absent ranks."""
    missing = [p for p in range(world_size) if p != rank and p not in socks]
    return DistBackendError(
        f"TCPTransport setup on rank {rank} timed out after {format_ms(deadline.seconds)}: "
        f"ranks {missing} never connected ({why})"
    )


def _gather(
    store: Store, rank: int, world_size: int, deadline: Deadline
) -> tuple[dict[int, str], bytes]:
    """Wait for every rank's address and the nonce; name the ranks that never published."""
    keys = [ADDR_KEY.format(p) for p in range(world_size)] + [NONCE_KEY]
    remaining = deadline.remaining()
    try:
        store.wait(keys, 0 if math.isinf(remaining) else max(remaining, 0.001))
    except DistStoreError as exc:
        absent = [p for p in range(world_size) if not store.check([ADDR_KEY.format(p)])]
        if not absent and not store.check([NONCE_KEY]):
            absent = [0]
        raise DistBackendError(
            f"TCPTransport setup on rank {rank} timed out after {format_ms(deadline.seconds)}: "
            f"ranks {absent} never connected (they did not publish their address: "
            f"did they start?)"
        ) from exc
    values = store.multi_get(keys)
    addrs = {p: values[p].decode() for p in range(world_size)}
    return addrs, values[-1]


def publish_lazy(store: Store, rank: int, listener: socket.socket, host: str, token: bytes) -> None:
    """Publish where ``rank`` listens, with its token, for peers that connect lazily."""
    port = listener.getsockname()[1]
    store.set(LAZY_ADDR_KEY.format(rank), f"{token.hex()} {host}:{port}")


def lookup_lazy(store: Store, rank: int, peer: int, deadline: Deadline) -> tuple[bytes, str]:
    """``peer``'s token and ``host:port``, waiting for it to publish them until ``deadline``."""
    key = LAZY_ADDR_KEY.format(peer)
    remaining = deadline.remaining()
    try:
        store.wait([key], 0 if math.isinf(remaining) else max(remaining, 0.001))
        value = store.get(key).decode()
    except DistStoreError as exc:
        raise TransportTimeout(
            f"rank {peer} to publish its address, for rank {rank} to connect to it (has it "
            f"created the group? did it start?)",
            deadline.seconds,
            (peer,),
        ) from exc
    token, _, addr = value.partition(" ")
    return bytes.fromhex(token), addr


def dial(addr: str, peer: int, ident: Identity, deadline: Deadline) -> socket.socket:
    """One attempt to connect to ``peer`` at ``addr`` and shake hands, by ``deadline``.

    Raises what :func:`~.handshake.shake_hands` raises, and OSError when connecting failed.
    """
    host, _, port = addr.rpartition(":")
    family, _, _, _, sockaddr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        tune(sock)
        remaining = deadline.remaining()
        sock.settimeout(None if math.isinf(remaining) else max(remaining, 0.001))
        sock.connect(sockaddr)
        shake_hands(sock, ident, peer, addr)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def _connect(
    addr: str,
    peer: int,
    ident: Identity,
    deadline: Deadline,
    socks: dict[int, socket.socket],
) -> socket.socket:
    """Connect to ``peer`` at ``addr`` and shake hands, retrying until ``deadline``.

    The acceptor answers at once (its thread serves every connection concurrently), so one
    attempt waits for the answer as long as the setup may take; it is retried only when the
    connection fails or the acceptor hangs up (it dropped it).
    """
    last = "no attempt"
    while not deadline.expired():
        try:
            return dial(addr, peer, ident, deadline)
        except DistBackendError:
            raise
        except OSError as exc:
            last = f"connecting to {addr} failed: {exc}"
            time.sleep(RETRY_S)
    raise _missing_error(ident.rank, ident.world_size, deadline, socks, f"rank {peer}: {last}")


__all__ = [
    "ADDR_KEY",
    "HELLO",
    "LAZY_ADDR_KEY",
    "NONCE_KEY",
    "build_mesh",
    "default_advertise_host",
    "dial",
    "listen",
    "lookup_lazy",
    "publish_lazy",
]
