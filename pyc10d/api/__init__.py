"""Layer 5 — the ``torch.distributed`` module surface: init, groups, collectives, objects, p2p."""

from .backend_config import (
    BackendConfig,
    get_default_backend_for_device,
    is_backend_available,
    is_gloo_available,
    is_mpi_available,
    is_nccl_available,
    is_ucc_available,
    is_xccl_available,
)
from .backends import _Work
from .collectives import *  # noqa: F403
from .collectives import __all__ as _collectives
from .debug import *  # noqa: F403
from .debug import __all__ as _debug
from .groups import new_group, new_subgroups, new_subgroups_by_enumeration, split_group
from .init import (
    _abort_process_group,
    _get_default_timeout,
    _store_based_barrier,
    default_pg_timeout,
    destroy_process_group,
    get_node_local_rank,
    init_process_group,
)
from .monitored import *  # noqa: F403
from .monitored import __all__ as _monitored
from .objects import *  # noqa: F403
from .objects import __all__ as _objects
from .p2p import *  # noqa: F403
from .p2p import __all__ as _p2p
from .state import (
    Backend,
    BackendUnavailableError,
    GroupMember,
    UnknownBackendError,
    _get_default_group,
    _get_default_store,
    _rank_not_in_group,
    get_backend,
    get_backend_config,
    get_global_rank,
    get_group_rank,
    get_process_group_ranks,
    get_rank,
    get_world_size,
    group,
    is_available,
    is_initialized,
)

__all__ = [
    "Backend",
    "BackendConfig",
    "BackendUnavailableError",
    "GroupMember",
    "UnknownBackendError",
    "_Work",
    "_abort_process_group",
    "_get_default_group",
    "_get_default_store",
    "_get_default_timeout",
    "_rank_not_in_group",
    "_store_based_barrier",
    "default_pg_timeout",
    "destroy_process_group",
    "get_backend",
    "get_backend_config",
    "get_default_backend_for_device",
    "get_global_rank",
    "get_group_rank",
    "get_node_local_rank",
    "get_process_group_ranks",
    "get_rank",
    "get_world_size",
    "group",
    "init_process_group",
    "is_available",
    "is_backend_available",
    "is_gloo_available",
    "is_initialized",
    "is_mpi_available",
    "is_nccl_available",
    "is_ucc_available",
    "is_xccl_available",
    "new_group",
    "new_subgroups",
    "new_subgroups_by_enumeration",
    "split_group",
    *_collectives,
    *_debug,
    *_monitored,
    *_objects,
    *_p2p,
]
