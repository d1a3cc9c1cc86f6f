"""Choosing a group's transport: ``PYC10D_TRANSPORT`` = ``auto`` (default), ``tcp`` or ``shm``.

``auto``: when every rank of the group runs on one host, collectives go through a shared-memory
arena (:mod:`~pyc10d.transport.shm.arena`) and point-to-point messages over TCP; when the ranks
span hosts, messages between ranks of one host go through shared-memory rings and the others
over TCP (one group mixes both). ``tcp``: TCP only, so cross-host paths can be tested on one host.
``shm``: the arena, plus point-to-point messages over shared-memory rings; it fails unless every
rank shares a host. Every rank of a group must use the same setting.

With lazy connection setup (``PYC10D_LAZY_INIT=1``, ``TORCH_GLOO_LAZY_INIT=1`` or ``lazy=True``,
see :mod:`.lazy`), creating a group connects nothing: point-to-point messages go over TCP
connections made on first use (in every mode: no shared-memory rings are set up), and the arena
(where the group has one) is attached by the first collective that uses it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..core.errors import DistBackendError
from ..core.timeouts import Deadline
from ..store import Store
from .base import Transport
from .hybrid import HybridTransport
from .lazy import resolve_lazy
from .shm.arena import ShmArena, single_host
from .shm.lazy import LazyArena
from .tcp import TCPTransport

ENV = "PYC10D_TRANSPORT"
DEFAULT_MODE = "auto"


def transport_mode() -> str:
    """The transport ``PYC10D_TRANSPORT`` asks for (``tcp``, ``shm`` or ``auto``)."""
    mode = os.environ.get(ENV, "").strip().lower() or DEFAULT_MODE
    if mode not in ("tcp", "shm", "auto"):
        raise ValueError(f"{ENV} must be 'tcp', 'shm' or 'auto', got {mode!r}")
    return mode


def make_transport(
    store: Store,
    rank: int,
    world_size: int,
    deadline: Deadline,
    bind_host: str | None = None,
    advertise_host: str | None = None,
    lazy: bool | None = None,
) -> Transport:
    """The transport of one rank of a group, as ``PYC10D_TRANSPORT`` selects (see module doc);
    connecting must finish by ``deadline``. ``lazy`` (None: as the environment says) connects
    nothing now: each pair of ranks connects on its first message."""
    mode = transport_mode()
    if resolve_lazy(lazy):
        return TCPTransport(store, rank, world_size, deadline, bind_host, advertise_host, True)
    if mode == "tcp" or world_size == 1:
        return TCPTransport(store, rank, world_size, deadline, bind_host, advertise_host)
    if mode == "auto" and single_host(store, rank, world_size, deadline):
        return TCPTransport(store, rank, world_size, deadline, bind_host, advertise_host)
    shm_peers = "all" if mode == "shm" else "auto"  # auto, several hosts: rings on each host
    return HybridTransport(
        store, rank, world_size, deadline, bind_host, advertise_host, shm_peers=shm_peers
    )


def make_arena(
    store: Store,
    rank: int,
    world_size: int,
    deadline: Deadline,
    failure: Callable[[list[int]], DistBackendError | None],
    lazy: bool | None = None,
) -> ShmArena | LazyArena | None:
    """The group's shared-memory arena, or None (``tcp`` mode, one rank, or several hosts).

    Every rank must call this. ``failure(peers)`` reports the transport's error or the loss of
    one of ``peers``, which ends the arena's waits for them. ``lazy`` (None: as the environment
    says) returns a :class:`LazyArena`, attached by the first collective that uses it (within
    the group's timeout, ``deadline.seconds``).
    """
    mode = transport_mode()
    if mode == "tcp" or world_size == 1:
        return None
    if not single_host(store, rank, world_size, deadline):
        if mode == "shm":
            raise DistBackendError(
                f"{ENV}=shm needs every rank on one host, but rank {rank}'s host lacks some"
            )
        return None
    if resolve_lazy(lazy):
        # failure is the transport's peer_failure: connect its peers before attaching
        connect = getattr(getattr(failure, "__self__", None), "connect_all", None)
        return LazyArena(store, rank, world_size, deadline.seconds, failure, connect)
    return ShmArena(store, rank, world_size, deadline, failure)


__all__ = ["make_arena", "make_transport", "transport_mode"]
