"""What the launcher runs: :class:`LaunchConfig`, and the environment each worker gets."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_MASTER_PORT = 29500  # torchrun's, for multi-node runs given no --master-port


@dataclass
class LaunchConfig:
    """One node's share of a job: the worker command, the group's shape and the policies.

    ``master_port=None`` picks a free port for each attempt (single node only).
    ``timeout`` (seconds, None: none) bounds the whole run; ``local_ranks_filter`` (None: all)
    selects the local ranks whose output is shown.
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

    @property
    def world_size(self) -> int:
        """Workers over all nodes: ``nnodes * nproc_per_node``."""
        return self.nnodes * self.nproc_per_node

    def global_rank(self, local_rank: int) -> int:
        """The global rank of this node's worker ``local_rank`` (nodes hold contiguous ranks)."""
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
    """The environment of worker ``local_rank``: ``base`` (os.environ) plus torchrun's variables."""
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
