"""What the launcher runs: :class:`LaunchConfig`, and the environment each worker gets."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from .logs import LogSpec

DEFAULT_MASTER_PORT = 29500  # torchrun's, for multi-node runs given no --master-port
DEFAULT_C10D_PORT = 29400  # torch's c10d rendezvous port, for an --rdzv-endpoint without one
DEFAULT_JOIN_TIMEOUT = 600.0  # torch's rendezvous join_timeout
DEFAULT_LAST_CALL_TIMEOUT = 30.0  # torch's last_call_timeout (--nnodes MIN:MAX)


@dataclass(frozen=True)
class RdzvSettings:
    """``--rdzv-backend c10d``: the launchers' store at ``host:port`` and how long to wait.

    ``is_host`` (``--rdzv-conf is_host=...``): whether this launcher serves the store; None to
    serve it when ``host`` names this machine and the port is still free (torch's rule).
    ``join_timeout`` bounds each rendezvous; ``last_call_timeout`` is how long a round waits for
    more nodes once ``min_nodes`` have joined (``--nnodes MIN:MAX``).
    """

    host: str
    port: int
    min_nodes: int
    max_nodes: int
    join_timeout: float = DEFAULT_JOIN_TIMEOUT
    last_call_timeout: float = DEFAULT_LAST_CALL_TIMEOUT
    is_host: bool | None = None


@dataclass
class LaunchConfig:
    """One node's share of a job: the worker command, the group's shape and the policies.

    ``master_port=None`` picks a free port for each attempt (single node only).
    ``timeout`` (seconds, None: none) bounds the whole run; ``local_ranks_filter`` (None: all)
    selects the local ranks whose output is shown; ``logs`` (None: none) the per-rank log files.
    ``rdzv`` (None: static, ``node_rank`` fixed) makes the nodes agree on their ranks through a
    store; once they have, ``rank_offset`` and ``total_workers`` say where this node's workers
    are (None: ``node_rank * nproc_per_node`` and ``nnodes * nproc_per_node``).
    """

    command: list[str]
    entrypoint: str
    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    max_restarts: int = 0
    monitor_interval: float = 0.1
    shutdown_timeout: float = 30.0
    timeout: float | None = None
    prefix: bool = False
    local_ranks_filter: frozenset[int] | None = None
    role: str = "default"
    run_id: str = "none"
    extra_env: dict[str, str] = field(default_factory=dict)
    logs: LogSpec | None = None
    rdzv: RdzvSettings | None = None
    local_addr: str | None = None
    rank_offset: int | None = None
    total_workers: int | None = None

    @property
    def world_size(self) -> int:
        """Workers over all nodes (``nnodes * nproc_per_node`` unless the nodes told otherwise)."""
        if self.total_workers is not None:
            return self.total_workers
        return self.nnodes * self.nproc_per_node

    def global_rank(self, local_rank: int) -> int:
        """The global rank of this node's worker ``local_rank`` (nodes hold contiguous ranks)."""
        if self.rank_offset is not None:
            return self.rank_offset + local_rank
        return self.node_rank * self.nproc_per_node + local_rank

    def shows_output(self, local_rank: int) -> bool:
        """Whether the console shows this local rank's output (torchrun's --local-ranks-filter)."""
        return self.local_ranks_filter is None or local_rank in self.local_ranks_filter


def worker_env(
    config: LaunchConfig,
    local_rank: int,
    restart_count: int,
    master_port: int,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of worker ``local_rank``: ``base`` (os.environ) plus torchrun's variables.

    ``config`` is the attempt's (its node rank and master settled by the rendezvous).
    """
    env = dict(os.environ if base is None else base)
    env.update(config.extra_env)
    rank = config.global_rank(local_rank)
    env.update(
        {
            "LOCAL_RANK": str(local_rank),
            "RANK": str(rank),
            "GROUP_RANK": str(config.node_rank),
            "ROLE_RANK": str(rank),
            "ROLE_NAME": config.role,
            "LOCAL_WORLD_SIZE": str(config.nproc_per_node),
            "WORLD_SIZE": str(config.world_size),
            "GROUP_WORLD_SIZE": str(config.nnodes),
            "ROLE_WORLD_SIZE": str(config.world_size),
            "MASTER_ADDR": config.master_addr,
            "MASTER_PORT": str(master_port),
            "TORCHELASTIC_RESTART_COUNT": str(restart_count),
            "TORCHELASTIC_MAX_RESTARTS": str(config.max_restarts),
            "TORCHELASTIC_RUN_ID": config.run_id,
            "TORCHELASTIC_USE_AGENT_STORE": "False",
        }
    )
    return env


def pick_free_port(host: str) -> int:
    """A port free on ``host`` now (the kernel's pick for ``bind(0)``, as ``--standalone`` does)."""
    for address in (host, ""):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((address, 0))
                return sock.getsockname()[1]
        except OSError:
            continue
    raise RuntimeError(f"could not find a free port on {host!r}")
