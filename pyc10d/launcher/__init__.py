"""The launcher behind ``pyc10d-run`` (torchrun's counterpart) and launcher-variable parsing.

Modules: :mod:`.cli` (flags, ``main``), :mod:`.config` (what to launch, each worker's
environment), :mod:`.supervisor` (start, watch, restart and stop the worker group),
:mod:`.nodes` (this node's rank and the master: static or c10d rendezvous between launchers),
:mod:`.worker` (one worker process), :mod:`.output` (streaming worker output, stderr tails),
:mod:`.logs` (per-rank log files), :mod:`.report` (failure reports); and, re-exported here,
rank, world size and master from torchrun, SLURM and MPI variables (``env://`` rendezvous).
"""

from ..rendezvous.launch_env import (
    LaunchEnvError,
    detect_local_rank,
    detect_master_addr,
    detect_master_port,
    detect_rank,
    detect_rank_and_world_size,
    detect_world_size,
    expand_nodelist,
    first_host,
)

__all__ = [
    "LaunchEnvError",
    "detect_local_rank",
    "detect_master_addr",
    "detect_master_port",
    "detect_rank",
    "detect_rank_and_world_size",
    "detect_world_size",
    "expand_nodelist",
    "first_host",
]
