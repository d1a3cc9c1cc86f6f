"""Where this node stands in the job: its node rank, its workers' ranks and the job's master.

:class:`StaticNodes` (``--rdzv-backend static``, the default) takes them from the flags
(``--node-rank``, ``--master-addr``, ``--master-port``). :class:`C10dNodes`
(``--rdzv-backend c10d``) lets the launchers agree on them through a pyc10d TCPStore at
``--rdzv-endpoint``: a launcher on the endpoint's host serves it (the first to bind the port, as
torch's c10d rendezvous backend does; ``--rdzv-conf is_host=1`` forces it), the others connect.

With c10d every attempt (the first run, each restart) is a round of keys under
``pyc10d-run/<rdzv-id>/r<attempt>/``: each launcher takes the next node rank from a counter
(``joined``) and posts its worker count (``node<k>``); the round closes (``closed``) when
``--nnodes`` MAX have joined, or ``last_call_timeout`` after MIN have; node 0 then posts the
workers' master (``master``: its address and a free port). A launcher whose workers fail posts
``end``, which stops the other nodes' workers too, so that all restart together (or all stop).
The launcher that serves the store waits, before it exits, until every node has finished.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta

from ..core.errors import DistError
from ..store import TCPStore
from .config import LaunchConfig, RdzvSettings, pick_free_port

POLL_SECONDS = 0.05
CONNECT_TRY_SECONDS = 1.0
EXIT_BARRIER_SECONDS = 300.0  # torch's agent exit_barrier_timeout

Stop = Callable[[], bool]  # True when a signal or --timeout says to stop waiting


class RendezvousError(RuntimeError):
    """The nodes could not agree: no store, a timeout, or this node came too late."""


class Interrupted(Exception):
    """A signal or ``--timeout`` cut a rendezvous wait short."""


@dataclass(frozen=True)
class Placement:
    """This node's place in one attempt of the job."""

    node_rank: int
    nnodes: int
    rank_offset: int
    world_size: int
    master_addr: str
    master_port: int

    def apply(self, config: LaunchConfig) -> LaunchConfig:
        """``config`` with this placement (what :func:`~.config.worker_env` reads)."""
        return replace(
            config,
            node_rank=self.node_rank,
            nnodes=self.nnodes,
            rank_offset=self.rank_offset,
            total_workers=self.world_size,
            master_addr=self.master_addr,
            master_port=self.master_port,
        )


@dataclass(frozen=True)
class PeerEnd:
    """Another node ended the round: its workers ``failed`` or it was ``stopped``."""

    kind: str
    node_rank: int

    def describe(self) -> str:
        """``the workers of node 1 failed`` or ``node 1 was stopped``."""
        if self.kind == "failed":
            return f"the workers of node {self.node_rank} failed"
        return f"node {self.node_rank} was stopped"


class StaticNodes:
    """Static rendezvous: the node rank and the master come from the flags."""

    def __init__(self, config: LaunchConfig):
        self.config = config

    def join(self, attempt: int, stop: Stop) -> Placement:
        """The same placement every attempt; a fresh free port when none was given."""
        config = self.config
        port = config.master_port
        if port is None:
            port = pick_free_port(config.master_addr)
        return Placement(
            node_rank=config.node_rank,
            nnodes=config.nnodes,
            rank_offset=config.node_rank * config.nproc_per_node,
            world_size=config.nnodes * config.nproc_per_node,
            master_addr=config.master_addr,
            master_port=port,
        )

    def peer_ended(self) -> PeerEnd | None:
        """Nodes do not talk to each other: never."""
        return None

    def end(self, kind: str) -> None:
        """Nothing to tell the other nodes."""

    def can_restart(self) -> bool:
        """Always (each node restarts on its own)."""
        return True

    def close(self, stop: Stop) -> None:
        """Nothing to release."""


def route_address(host: str, port: int) -> str:
    """This machine's address on the route to ``host`` (no packet sent); its FQDN on error."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(sockaddr)
            return str(sock.getsockname()[0])
    except OSError:
        return socket.getfqdn()


def _is_this_machine(host: str) -> bool:
    """True if ``host`` names this machine: one of its addresses, else torch's hostname test."""
    if _is_local_address(host):
        return True
    # torch's test (hostname, FQDN or one of this machine's addresses); private but stable
    from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname

    try:
        return _matches_machine_hostname(host)
    except OSError:  # this machine's own hostname resolves nowhere (no DNS, no /etc/hosts)
        return False


def _is_local_address(host: str) -> bool:
    """True if ``host`` resolves to an address of this machine (one a socket can bind to)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((sockaddr[0], 0))
            except OSError:
                continue
            return True
    return False


class C10dNodes:
    """c10d rendezvous: the launchers agree on node ranks and the master through a TCPStore."""

    def __init__(self, config: LaunchConfig):
        assert config.rdzv is not None
        self.config = config
        self.settings: RdzvSettings = config.rdzv
        self.store: TCPStore | None = None
        self.is_host = False
        self.node_rank: int | None = None  # in the current round
        self.nnodes = 0
        self._round = 0
        self._lost = False  # the store stopped answering after the workers started

    # -- keys and waiting ---------------------------------------------------------------------
    def _key(self, name: str, round_: int | None = None) -> str:
        round_ = self._round if round_ is None else round_
        return f"pyc10d-run/{self.config.run_id}/r{round_}/{name}"

    def _store(self) -> TCPStore:
        assert self.store is not None
        return self.store

    def _pause(self, stop: Stop, deadline: float, waiting_for: str) -> None:
        if stop():
            raise Interrupted(waiting_for)
        if time.monotonic() >= deadline:
            raise RendezvousError(
                f"timed out after {self.settings.join_timeout:g} s (join_timeout) {waiting_for}"
            )
        time.sleep(POLL_SECONDS)

    def _wait_get(self, key: str, stop: Stop, deadline: float, waiting_for: str) -> bytes:
        store = self._store()
        while not store.check([key]):
            self._pause(stop, deadline, waiting_for)
        return store.get(key)

    # -- connecting ---------------------------------------------------------------------------
    def _serve(self) -> bool:
        """Try to serve the store (when this is its host); False when the port is taken."""
        settings = self.settings
        is_host = settings.is_host
        if is_host is None:
            is_host = _is_this_machine(settings.host)
        if not is_host:
            return False
        try:
            self.store = TCPStore(
                settings.host, settings.port, is_master=True, timeout=settings.join_timeout
            )
        except DistError as exc:
            if settings.is_host:  # told to serve it: no fallback
                raise RendezvousError(
                    f"could not serve the rendezvous store on port {settings.port}: {exc}"
                ) from exc
            return False  # another launcher on this machine serves it (torch does the same)
        self.is_host = True
        return True

    def _connect(self, stop: Stop) -> None:
        settings = self.settings
        if self._serve():
            return
        if settings.port == 0:
            raise RendezvousError("--rdzv-endpoint port 0 only works on the store's host")
        deadline = time.monotonic() + settings.join_timeout
        where = f"{settings.host}:{settings.port}"
        while self.store is None:
            try:
                self.store = TCPStore(
                    settings.host, settings.port, timeout=timedelta(seconds=CONNECT_TRY_SECONDS)
                )
            except DistError as exc:
                self._pause(stop, deadline, f"connecting to the store at {where} ({exc})")
        self.store.set_timeout(timedelta(seconds=settings.join_timeout))

    # -- a round ------------------------------------------------------------------------------
    def _await_close(self, stop: Stop, deadline: float) -> int:
        """Wait until the round closes; the number of nodes in it."""
        store, settings = self._store(), self.settings
        closed, joined = self._key("closed"), self._key("joined")
        min_seen_at: float | None = None
        while not store.check([closed]):
            count = store.add(joined, 0)
            now = time.monotonic()
            if count >= settings.min_nodes and min_seen_at is None:
                min_seen_at = now
            last_call_over = (
                min_seen_at is not None and now - min_seen_at >= settings.last_call_timeout
            )
            if count >= settings.max_nodes or last_call_over:
                store.compare_set(closed, "", str(min(count, settings.max_nodes)))
                continue
            need = settings.min_nodes if min_seen_at is None else settings.max_nodes
            self._check_not_over()
            self._pause(stop, deadline, f"waiting for nodes: {count} of {need} joined")
        return int(store.get(closed))

    def _check_not_over(self) -> None:
        """A restart waits in vain for a node whose workers finished the previous round."""
        if self._round > 0 and self._store().add(self._key("ok", self._round - 1), 0) > 0:
            raise RendezvousError("another node's workers finished the job already")

    def _master(self, stop: Stop, deadline: float) -> tuple[str, int]:
        """Node 0 posts the workers' master (its address, a free port); all read it."""
        store, key = self._store(), self._key("master")
        if self.node_rank == 0:
            addr = self.config.local_addr or self._address()
            port = self.config.master_port or pick_free_port(addr)
            store.set(key, json.dumps([addr, port]))
        addr, port = json.loads(self._wait_get(key, stop, deadline, "waiting for node 0"))
        return str(addr), int(port)

    def _address(self) -> str:
        if self.is_host:
            return self.settings.host  # the other nodes reach this machine by that name
        return route_address(self.settings.host, self.settings.port)

    def join(self, attempt: int, stop: Stop) -> Placement:
        """Join round ``attempt``: wait for the other nodes; this node's placement in it."""
        try:
            return self._join(attempt, stop)
        except (DistError, OSError) as exc:
            where = f"{self.settings.host}:{self.settings.port}"
            raise RendezvousError(f"the rendezvous store at {where} failed: {exc}") from exc

    def _join(self, attempt: int, stop: Stop) -> Placement:
        deadline = time.monotonic() + self.settings.join_timeout
        if self.store is None:
            self._connect(stop)
        store = self._store()
        self._round = attempt
        self.node_rank = None
        rank = store.add(self._key("joined"), 1) - 1
        store.set(self._key(f"node{rank}"), str(self.config.nproc_per_node))
        nnodes = self._await_close(stop, deadline)
        if rank >= nnodes:
            raise RendezvousError(
                f"round {attempt} of job {self.config.run_id!r} closed with {nnodes} node(s) "
                "before this node joined"
            )
        self.node_rank, self.nnodes = rank, nnodes
        nprocs = [
            int(self._wait_get(self._key(f"node{i}"), stop, deadline, f"waiting for node {i}"))
            for i in range(nnodes)
        ]
        addr, port = self._master(stop, deadline)
        return Placement(rank, nnodes, sum(nprocs[:rank]), sum(nprocs), addr, port)

    def peer_ended(self) -> PeerEnd | None:
        """Whether another node ended this round (checked while the workers run)."""
        if self.store is None or self._lost:
            return None
        key = self._key("end")
        try:
            if not self.store.check([key]):
                return None
            kind, _, node = self.store.get(key).decode().partition(":")
        except (DistError, OSError):
            self._lost = True  # the store's host is gone: this node carries on alone
            return None
        return PeerEnd(kind, int(node) if node.isdigit() else -1)

    def end(self, kind: str) -> None:
        """Tell the other nodes how this node's round ended: ``ok``, ``failed`` or ``stopped``."""
        if self.store is None or self._lost:
            return
        try:
            if kind == "ok":
                self.store.add(self._key("ok"), 1)
            else:
                self.store.compare_set(self._key("end"), "", f"{kind}:{self.node_rank}")
        except (DistError, OSError):
            self._lost = True

    def can_restart(self) -> bool:
        """Whether a new round can gather the nodes: none of them finished this one already."""
        if self.store is None or self._lost:
            return False
        try:
            return self.store.add(self._key("ok"), 0) == 0
        except (DistError, OSError):
            return False

    def close(self, stop: Stop) -> None:
        """Count this node out; the store's host waits (bounded) for the other nodes first."""
        store = self.store
        if store is None:
            return
        try:
            if self.node_rank is not None and not self._lost:
                store.add("pyc10d-run/" + self.config.run_id + "/finished", 1)
            if self.is_host:
                self._exit_barrier(stop)
        except (DistError, OSError, Interrupted, RendezvousError):
            pass  # leaving anyway
        finally:
            self.store = None
            store.close()

    def _exit_barrier(self, stop: Stop) -> None:
        store, key = self._store(), "pyc10d-run/" + self.config.run_id + "/finished"
        deadline = time.monotonic() + EXIT_BARRIER_SECONDS
        while store.add(key, 0) < self.nnodes:
            self._pause(stop, deadline, "waiting for the other nodes to finish")


def make_nodes(config: LaunchConfig) -> StaticNodes | C10dNodes:
    """The rendezvous ``config`` asks for."""
    return StaticNodes(config) if config.rdzv is None else C10dNodes(config)
