"""Choosing a group's transport: ``PYC10D_TRANSPORT`` = ``tcp``, ``shm`` or ``auto``.

``tcp`` uses TCP between every pair (cross-host paths can then be tested on one host); ``shm``
uses shared memory between every pair and fails unless all ranks share a host; ``auto`` uses
shared memory between same-host ranks and TCP between the others. The default is ``tcp`` for
now: on a busy 2-core host shared memory did not beat TCP yet. Every rank of a group must use
the same setting.
"""

from __future__ import annotations

import os

from ..store import Store
from .base import Transport
from .hybrid import HybridTransport
from .tcp import TCPTransport

ENV = "PYC10D_TRANSPORT"
DEFAULT_MODE = "tcp"
_SHM_PEERS = {"shm": "all", "auto": "auto"}


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
    timeout: float,
    bind_host: str | None = None,
    advertise_host: str | None = None,
) -> Transport:
    """The transport of one rank of a group, as ``PYC10D_TRANSPORT`` selects (see module doc)."""
    mode = transport_mode()
    if mode == "tcp" or world_size == 1:
        return TCPTransport(store, rank, world_size, timeout, bind_host, advertise_host)
    return HybridTransport(
        store, rank, world_size, timeout, bind_host, advertise_host, shm_peers=_SHM_PEERS[mode]
    )


__all__ = ["make_transport", "transport_mode"]
