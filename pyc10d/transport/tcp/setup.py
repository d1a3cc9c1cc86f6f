"""Building the full TCP mesh of a group through the store.

Every rank listens on an ephemeral port and publishes ``host:port`` under ``transport/addr/{rank}``;
rank 0 publishes a random group nonce under ``transport/nonce``. Rank ``i`` then connects to each
rank ``j < i`` and accepts one connection from each ``j > i``. The connecting side opens with a
hello (magic, nonce, its rank, the world size); the accepting side checks it, drops strays, and
answers with its own hello, which the connecting side checks in turn.
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import socket
import struct
import time

from ...core.errors import DistBackendError, DistNetworkError, DistStoreError
from ...core.timeouts import Deadline, format_ms
from ...store import Store, TCPStore

ADDR_KEY = "transport/addr/{}"
NONCE_KEY = "transport/nonce"
MAGIC = b"pTCP"
HELLO = struct.Struct("<4s16sII")  # magic, group nonce, sender's rank, world size
SOCKET_BUFFER: int | None = None  # None: kernel autotuning (faster here than a fixed 4 MiB)
HELLO_TIMEOUT_S = 5.0  # the most an accepted connection may take to say hello
RETRY_S = 0.05
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


def tune(sock: socket.socket) -> None:
    """No Nagle delay, keep-alive probes, and fixed buffers if asked (before connect/listen)."""
    if SOCKET_BUFFER:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


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
    """Connect ``rank`` to every other rank; return the (blocking) sockets by peer rank."""
    listener = listen(bind_host, world_size)
    socks: dict[int, socket.socket] = {}
    try:
        host = advertise_host or default_advertise_host(store, bind_host)
        port = listener.getsockname()[1]
        if rank == 0:
            store.set(NONCE_KEY, secrets.token_bytes(16))
        store.set(ADDR_KEY.format(rank), f"{host}:{port}")
        addrs, nonce = _gather(store, rank, world_size, deadline)
        for peer in range(rank):
            socks[peer] = _connect(addrs[peer], peer, rank, world_size, nonce, deadline, socks)
        _accept(listener, rank, world_size, nonce, deadline, socks)
    except BaseException:
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


def _hello(nonce: bytes, rank: int, world_size: int) -> bytes:
    return HELLO.pack(MAGIC, nonce, rank, world_size)


def _read_hello(sock: socket.socket) -> tuple[bytes, bytes, int, int] | None:
    """Read one hello from ``sock`` (its timeout applies); None if the peer hung up."""
    buf = bytearray(HELLO.size)
    view = memoryview(buf)
    got = 0
    while got < HELLO.size:
        n = sock.recv_into(view[got:])
        if not n:
            return None
        got += n
    return HELLO.unpack(buf)


def _connect(
    addr: str,
    peer: int,
    rank: int,
    world_size: int,
    nonce: bytes,
    deadline: Deadline,
    socks: dict[int, socket.socket],
) -> socket.socket:
    """Connect to ``peer`` at ``addr`` and exchange hellos, retrying until ``deadline``."""
    host, _, port = addr.rpartition(":")
    last = "no attempt"
    while not deadline.expired():
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(
                host, int(port), type=socket.SOCK_STREAM
            )[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            last = str(exc)
            time.sleep(RETRY_S)
            continue
        try:
            tune(sock)
            sock.settimeout(min(deadline.remaining(), HELLO_TIMEOUT_S * 2))
            sock.connect(sockaddr)
            sock.sendall(_hello(nonce, rank, world_size))
            reply = _read_hello(sock)
            if reply == (MAGIC, nonce, peer, world_size):
                return sock
            sock.close()
            raise DistBackendError(
                f"TCPTransport setup on rank {rank}: {addr} did not answer as rank {peer} of "
                f"this group (answer: {reply!r})"
            )
        except OSError as exc:
            sock.close()
            last = f"connecting to {addr} failed: {exc}"
            time.sleep(RETRY_S)
    raise _missing_error(rank, world_size, deadline, socks, f"rank {peer}: {last}")


def _accept(
    listener: socket.socket,
    rank: int,
    world_size: int,
    nonce: bytes,
    deadline: Deadline,
    socks: dict[int, socket.socket],
) -> None:
    """Accept a connection from every higher rank; drop connections that are not one."""
    waiting = set(range(rank + 1, world_size))
    while waiting:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise _missing_error(rank, world_size, deadline, socks, "no connection came")
        listener.settimeout(min(remaining, 1.0))
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            continue
        try:
            sock.settimeout(min(remaining, HELLO_TIMEOUT_S))
            hello = _read_hello(sock)
            if hello is None or hello[:2] != (MAGIC, nonce) or hello[3] != world_size:
                raise ConnectionError("not a peer of this group")
            peer = hello[2]
            if peer not in waiting:
                raise ConnectionError(f"unexpected rank {peer}")
            sock.sendall(_hello(nonce, rank, world_size))
        except (OSError, struct.error):
            sock.close()
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks[peer] = sock
        waiting.discard(peer)
