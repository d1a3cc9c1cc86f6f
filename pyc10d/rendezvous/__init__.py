"""Rendezvous: turn an ``init_method`` URL into ``(store, rank, world_size)`` (torch's rendezvous).

Schemes: ``tcp://host:port?rank=R&world_size=W`` (rank 0 hosts a TCPStore),
``env://`` (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE; or SLURM's and MPI launchers' variables)
and ``file:///path?rank=R&world_size=W``. Under torchrun, ``tcp://`` and ``env://`` join the
store its agent hosts (``TORCHELASTIC_USE_AGENT_STORE=True``), as torch's do.
Handlers are generators yielding ``(store, rank, world_size)``; more schemes can be registered.

With ``tcp://`` and ``env://`` (outside torchrun) every rank joins the store under its rank and
world size, and waits until all ranks have (see :mod:`pyc10d.store.tcp.join`). Mistakes fail at
once instead of hanging: ranks started with different world sizes (the message names both
values and both ranks; every rank that reached the store fails), or two processes with the same
rank. While waiting, rank 0 logs a WARNING every 30 s naming the missing ranks, e.g.
``rank 0 waiting for ranks 1, 2 (1/3 joined) at 127.0.0.1:29500, 30 s of 1800 s``, and a rank
still trying to connect names the address it tries (``PYC10D_RENDEZVOUS_PROGRESS_S`` sets the
interval). A timeout says how many of how many ranks joined, and which are missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import torch.distributed

from ..core.timeouts import DEFAULT_PG_TIMEOUT, TimeoutLike, to_seconds, to_timedelta
from ..store import FileStore, Store, TCPStore
from ..store.table import INTERNAL_PREFIX
from ..store.tcp.join import JoinSpec, join
from ..store.torch_store import TorchStore
from .launch_env import (
    LaunchEnvError,
    detect_master_addr,
    detect_master_port,
    detect_rank,
    detect_world_size,
)

RendezvousResult = tuple[Store, int, int]
RendezvousHandler = Callable[..., Iterator[RendezvousResult]]

_handlers: dict[str, RendezvousHandler] = {}


def register_rendezvous_handler(scheme: str, handler: RendezvousHandler) -> None:
    """Register ``handler(url, **kwargs)`` for URLs of ``scheme``; a second one is an error."""
    if scheme in _handlers:
        raise RuntimeError(f"Rendezvous handler for {scheme}:// already registered")
    _handlers[scheme] = handler


def rendezvous(
    url: str, rank: int = -1, world_size: int = -1, **kwargs
) -> Iterator[RendezvousResult]:
    """Return an iterator yielding ``(store, rank, world_size)`` for ``url``.

    ``rank``/``world_size`` given here are added to the URL's query, as in torch; giving them
    both here and in the URL is a ValueError.
    """
    if not isinstance(url, str):
        raise ValueError(f"rendezvous url must be a str, got {type(url).__name__}: {url!r}")
    for name, value in (("rank", rank), ("world_size", world_size)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"rendezvous {name} must be an int, got {value!r}")
    parsed = urlparse(url)
    if not parsed.scheme:
        raise ValueError(
            f"rendezvous url {url!r} has no scheme (expected tcp://, env:// or file://)"
        )
    if rank != -1 or world_size != -1:
        query = dict(parse_qsl(parsed.query))
        if "rank" in query or "world_size" in query:
            raise ValueError(
                f"The url: {url} has node-specific arguments(rank, world_size) already."
            )
        if rank != -1:
            query["rank"] = str(rank)
        if world_size != -1:
            query["world_size"] = str(world_size)
        url = urlunparse(parsed._replace(query=urlencode(query)))
    handler = _handlers.get(parsed.scheme)
    if handler is None:
        raise ValueError(f"No rendezvous handler for {parsed.scheme}://")
    return handler(url, **kwargs)


def _error(scheme: str, message: str) -> ValueError:
    return ValueError(f"Error initializing pyc10d using {scheme}:// rendezvous: {message}")


def _int_param(scheme: str, query: dict[str, str], name: str, label: str) -> int:
    if name not in query:
        raise _error(scheme, f"{label} parameter missing")
    try:
        return int(query[name])
    except ValueError:
        raise _error(scheme, f"{label} parameter is not an integer: {query[name]!r}") from None


def _rank_and_size(scheme: str, query: dict[str, str]) -> tuple[int, int]:
    rank = _int_param(scheme, query, "rank", "rank")
    world_size = _int_param(scheme, query, "world_size", "world size")
    if world_size < 1:
        raise _error(scheme, f"world size must be positive, got {world_size}")
    if not 0 <= rank < world_size:
        raise _error(scheme, f"rank {rank} is out of range for world size {world_size}")
    return rank, world_size


JOIN_PREFIX = INTERNAL_PREFIX + "rendezvous/"  # the keys of the ranks' join (see _tcp_store)

AGENT_STORE_ENV = "TORCHELASTIC_USE_AGENT_STORE"
"""Set to ``True`` by torchrun, whose agent already hosts a (torch) TCPStore at MASTER_PORT."""


def uses_agent_store() -> bool:
    """True under torchrun: its agent hosts the store, so every rank joins as a client."""
    return os.environ.get(AGENT_STORE_ENV) == str(True)


def _tcp_store(host: str, port: int, rank: int, world_size: int, timeout: TimeoutLike) -> Store:
    """Rank 0 hosts the (multi-tenant) server; every rank connects and joins under its rank.

    The join (:func:`~pyc10d.store.tcp.join.join`) returns once all ``world_size`` ranks have
    joined; a world-size mismatch or a rank joined twice raises DistStoreError on every rank
    that reached the store. Under torchrun (:func:`uses_agent_store`) the agent's torch
    TCPStore is joined instead, with torch's own client and no join, as ``torch.distributed``'s
    ``env://`` and ``tcp://`` do (torchrun already agrees on the world size, and its store
    outlives restarts, whose keys a join would trip over).
    """
    if uses_agent_store():
        client = torch.distributed.TCPStore(
            host, port, world_size, is_master=False, timeout=to_timedelta(timeout)
        )
        return TorchStore(client)
    store = TCPStore(
        host, port, world_size, rank == 0, timeout, wait_for_workers=False, multi_tenant=True
    )
    spec = JoinSpec(
        prefix=JOIN_PREFIX,
        world_size=world_size,
        address=f"{host}:{store.port}",
        timeout_s=to_seconds(timeout),
        is_master=rank == 0,
        rank=rank,
    )
    try:
        join(store, spec)
    except BaseException:
        store.close()
        raise
    return store


def _tcp_handler(
    url: str, timeout: TimeoutLike = DEFAULT_PG_TIMEOUT, **kwargs
) -> Iterator[RendezvousResult]:
    parsed = urlparse(url)
    try:
        port = parsed.port
    except ValueError as exc:
        raise _error("tcp", f"invalid port in {url!r}: {exc}") from None
    if not parsed.hostname:
        raise _error("tcp", f"host name missing in {url!r}")
    if port is None:
        raise _error("tcp", "port number missing")
    rank, world_size = _rank_and_size("tcp", dict(parse_qsl(parsed.query)))
    store = _tcp_store(parsed.hostname, port, rank, world_size, timeout)
    yield store, rank, world_size
    raise RuntimeError("Unable to perform re-rendezvous using tcp:// method")


def _env_handler(
    url: str, timeout: TimeoutLike = DEFAULT_PG_TIMEOUT, **kwargs
) -> Iterator[RendezvousResult]:
    """``env://``: rank and world size from the URL, else torchrun/SLURM/MPI variables.

    The master address and port come from MASTER_ADDR/MASTER_PORT, or under SLURM from the node
    list and job id (see :mod:`pyc10d.rendezvous.launch_env`).
    """
    query = dict(parse_qsl(urlparse(url).query))
    try:
        rank = int(query["rank"]) if "rank" in query else detect_rank(os.environ)[0]
        world_size = (
            int(query["world_size"]) if "world_size" in query else detect_world_size(os.environ)[0]
        )
        host = detect_master_addr(os.environ)[0]
        port = detect_master_port(os.environ)[0]
    except LaunchEnvError as exc:
        raise _error("env", str(exc)) from None
    rank, world_size = _rank_and_size("env", {"rank": str(rank), "world_size": str(world_size)})
    store = _tcp_store(host, port, rank, world_size, timeout)
    yield store, rank, world_size
    raise RuntimeError("Unable to perform re-rendezvous using env:// method")


def _file_handler(
    url: str, timeout: TimeoutLike | None = None, **kwargs
) -> Iterator[RendezvousResult]:
    parsed = urlparse(url)
    path = parsed.path or parsed.netloc
    if not path:
        raise _error("file", f"path missing in {url!r}")
    rank, world_size = _rank_and_size("file", dict(parse_qsl(parsed.query)))
    store = FileStore(path, world_size)
    if timeout is not None:
        store.set_timeout(timeout)
    yield store, rank, world_size
    raise RuntimeError("Unable to perform re-rendezvous using file:// method")


register_rendezvous_handler("tcp", _tcp_handler)
register_rendezvous_handler("env", _env_handler)
register_rendezvous_handler("file", _file_handler)
