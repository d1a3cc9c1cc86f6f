"""The module-level state behind the ``torch.distributed`` API: the default group and the
registry of groups (their global ranks), plus ``Backend``, ``group`` and ``GroupMember``."""

from __future__ import annotations

import threading
import warnings
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..process_group import ProcessGroup
from ..process_group.process_group import BackendType
from ..store import Store

PYC10D = "pyc10d"
_ALIASES = {"gloo": "gloo", PYC10D: PYC10D}

BUILT_IN_MESSAGES = {
    "nccl": "Distributed package doesn't have NCCL built in",
    "mpi": (
        "Distributed package doesn't have MPI built in. MPI is only included if you build "
        "PyTorch from source on a host that has MPI installed."
    ),
    "xccl": "Distributed package doesn't have XCCL built in",
}
"""torch's RuntimeError for a built-in backend it was compiled without, by name."""

NOT_PROVIDED = (*BUILT_IN_MESSAGES, "ucc")
"""Names of torch's backends that pyc10d does not provide."""


class BackendUnavailableError(RuntimeError, ValueError):
    """A backend this install does not provide (NCCL, MPI, XCCL, UCC): torch's RuntimeError
    ("Distributed package doesn't have NCCL built in"), and a ValueError as pyc10d's
    ``Backend(...)`` has always raised for these names."""


class UnknownBackendError(AssertionError, ValueError):
    """A backend name that nothing provides: torch's AssertionError ("Unknown backend type
    foo"), and a ValueError as pyc10d's ``Backend(...)`` has always raised."""


def unavailable(name: str) -> BackendUnavailableError | UnknownBackendError:
    """torch's error for a backend of :data:`NOT_PROVIDED` in a torch built without it ("Distributed
    package doesn't have NCCL built in"; "Unknown c10d backend type UCC"), saying what pyc10d
    offers."""
    first = BUILT_IN_MESSAGES.get(name)
    error = BackendUnavailableError if first is not None else UnknownBackendError
    if first is None:
        first = f"Unknown c10d backend type {name.upper()}"
    return error(
        f"{first}: pyc10d does not provide the {name!r} backend; it runs collectives on CPU "
        "tensors (and CUDA tensors staged through host memory) with its own engine: use "
        "backend='gloo' (an alias), 'pyc10d', or leave it unset"
    )


def backend_name(name: str) -> Backend:
    """``name`` read as torch's ``Backend(name)`` does, with no check: the value of the class
    attribute ``Backend.<NAME>`` if there is one, else ``name`` lower-cased."""
    value = getattr(Backend, name.upper(), Backend.UNDEFINED)
    if not isinstance(value, str) or value == Backend.UNDEFINED:
        value = name.lower()
    return str.__new__(Backend, value)


_BackendPlugin = namedtuple("_BackendPlugin", ["creator_fn", "extended_api"])


class Backend(str):
    """A backend name, lower-cased (``Backend("GLOO") == "gloo"``), like torch's ``Backend``.

    pyc10d runs everything on its own engine; ``"gloo"`` names it too, so unmodified torch
    scripts run. A ``"device:backend,..."`` string (``"cpu:gloo"``) is returned lower-cased
    as torch does, once :class:`~pyc10d.api.backend_config.BackendConfig` has checked its
    form; the group creation checks its backends. Unlike torch's, a plain name nothing
    provides is refused here: :class:`BackendUnavailableError` for NCCL, MPI, UCC and XCCL
    (torch's "Distributed package doesn't have NCCL built in"), :class:`UnknownBackendError`
    for any other (torch's "Unknown backend type"); both are ValueErrors too.
    The registry torch keeps on this class is here too: ``backend_list``,
    ``default_device_backend_map``, ``backend_capability``, ``backend_type_map``, ``_plugins``
    and :meth:`register_backend`; a registered name is accepted by ``Backend(name)``.
    """

    UNDEFINED = "undefined"
    GLOO = "gloo"
    PYC10D = PYC10D
    NCCL = "nccl"
    XCCL = "xccl"
    UCC = "ucc"
    MPI = "mpi"

    _BackendPlugin = _BackendPlugin
    _plugins: dict[str, _BackendPlugin] = {}

    backend_list: list[str] = [UNDEFINED, GLOO, NCCL, XCCL, UCC, MPI, PYC10D]

    default_device_backend_map: dict[str, str] = {
        "cpu": GLOO,
        "cuda": NCCL,
        "xpu": XCCL,
        "mps": GLOO,
    }

    backend_capability: dict[str, list[str]] = {
        GLOO: ["cpu", "cuda"],
        NCCL: ["cuda"],
        XCCL: ["xpu"],
        UCC: ["cpu", "cuda"],
        MPI: ["cpu", "cuda"],
        PYC10D: ["cpu", "cuda"],
    }

    backend_type_map: dict[str, BackendType] = {
        UNDEFINED: BackendType.UNDEFINED,
        GLOO: BackendType.GLOO,
        NCCL: BackendType.NCCL,
        XCCL: BackendType.XCCL,
        UCC: BackendType.UCC,
        MPI: BackendType.MPI,
        PYC10D: BackendType.CUSTOM,
    }

    def __new__(cls, name: str) -> Backend:
        if not isinstance(name, str):
            raise ValueError(f"Backend name must be a string, but got: {name!r}")
        value = name.lower()
        if ":" in value or "," in value:
            from .backend_config import BackendConfig  # it builds on this class

            BackendConfig(value)  # torch's ValueError for a malformed string
            return super().__new__(cls, value)
        if value.upper() in Backend._plugins or value == Backend.UNDEFINED:
            return super().__new__(cls, value)
        if value in NOT_PROVIDED:
            raise unavailable(value)
        if value not in _ALIASES:
            raise UnknownBackendError(
                f"Unknown backend type {name} (Invalid backend {name!r}: pyc10d accepts "
                "'gloo', 'pyc10d', a registered backend or a 'device:backend,...' string)"
            )
        return super().__new__(cls, _ALIASES[value])

    @classmethod
    def register_backend(
        cls,
        name: str,
        func: Callable[..., Any],
        extended_api: bool = False,
        devices: str | list[str] | None = None,
    ) -> None:
        """Record a third-party backend as torch's ``Backend.register_backend`` does.

        Adds ``Backend.<NAME>``, the name to ``backend_list``, each of ``devices`` without a
        default backend to ``default_device_backend_map``, the devices to
        ``backend_capability`` (torch's warning and ``cpu``/``cuda`` when None), ``CUSTOM`` to
        ``backend_type_map``, and ``(func, extended_api)`` to ``_plugins[NAME]``.
        """
        lower, upper = name.lower(), name.upper()
        if not hasattr(Backend, upper):
            setattr(Backend, upper, lower)
        if lower not in Backend.backend_list:
            Backend.backend_list.append(lower)
        device_list = [devices] if isinstance(devices, str) else devices
        for device in device_list or []:
            current = Backend.default_device_backend_map.get(device)
            if current is None or (current == "fake" and lower != "fake"):
                Backend.default_device_backend_map[device] = lower
        Backend.backend_type_map[lower] = BackendType.CUSTOM
        if device_list is None:
            warnings.warn(
                f"Device capability of {name} unspecified, assuming `cpu` and `cuda` or `xpu`. "
                "Please specify it via the `devices` argument of `register_backend`.",
                stacklevel=2,
            )
            device_list = ["cpu", "cuda"]
        Backend.backend_capability[lower] = list(device_list)
        Backend._plugins[upper] = _BackendPlugin(func, extended_api)


@dataclass
class GroupInfo:
    """What the API knows about one group: its backend name and its members' global ranks."""

    backend: str
    ranks: list[int]  # global rank of each group rank
    name: str
    store: Store | None = None
    config: str | None = None  # str(BackendConfig(backend)) when the group was made

    def group_rank(self, global_rank: int) -> int:
        """This group's rank of ``global_rank``; ValueError if it is not a member."""
        try:
            return self.ranks.index(global_rank)
        except ValueError:
            message = f"Global rank {global_rank} is not part of group {self.name}"
            raise ValueError(message) from None


@dataclass
class World:
    """The default group and every group created through the API."""

    default_pg: ProcessGroup | None = None
    default_store: Store | None = None
    global_rank: int = -1
    groups: dict[ProcessGroup, GroupInfo] = field(default_factory=dict)
    group_count: int = 0
    local_group_counts: dict[tuple[int, ...], int] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


_world = World()


class _NonGroupMember:
    """The value ``new_group`` returns on ranks outside the group (torch's NON_GROUP_MEMBER)."""

    def __repr__(self) -> str:
        return "GroupMember.NON_GROUP_MEMBER"


class _WorldProperty(type):
    @property
    def WORLD(cls) -> ProcessGroup | None:
        """The default group (None before ``init_process_group``)."""
        return _world.default_pg


class GroupMember(metaclass=_WorldProperty):
    """``GroupMember.WORLD`` (the default group) and ``GroupMember.NON_GROUP_MEMBER``."""

    NON_GROUP_MEMBER = _NonGroupMember()


class group(metaclass=_WorldProperty):
    """``group.WORLD``: the default process group."""


def default_group() -> ProcessGroup:
    """The default group; ValueError (torch's message) before ``init_process_group``."""
    pg = _world.default_pg
    if pg is None:
        raise ValueError(
            "Default process group has not been initialized, "
            "please make sure to call init_process_group."
        )
    return pg


def _get_default_group() -> ProcessGroup:
    """The default group (torch's private ``_get_default_group``); ValueError before init."""
    return default_group()


def _get_default_store() -> Store:
    """The default group's store (torch's private ``_get_default_store``).

    As in torch, ``PrefixStore("default_pg", <the rendezvous store>)``, whose timeout is the
    ``timeout`` given to ``init_process_group`` when it made the store; torch's ValueError
    before ``init_process_group``.
    """
    default_group()
    store = _world.default_store
    if store is None:  # pragma: no cover - set together with the default group
        raise ValueError("the default process group has no store")
    return store


def is_initialized() -> bool:
    """True once ``init_process_group`` has run (and until it is destroyed)."""
    return _world.default_pg is not None


def is_available() -> bool:
    """Always True: pyc10d needs nothing beyond torch."""
    return True


def is_non_member(group: Any) -> bool:
    """True when ``group`` is the non-member marker (this rank is outside that group)."""
    return group is GroupMember.NON_GROUP_MEMBER


def _rank_not_in_group(group: Any) -> bool:
    """True when this rank is not a member of ``group`` (torch's private helper, used by tests)."""
    return is_non_member(group)


def resolve(group: Any) -> ProcessGroup | None:
    """The ProcessGroup for ``group`` (None: the default); None when this rank isn't a member.

    As in torch, a group made with the constructor (``ProcessGroup(store, rank, size)``, or a
    Python backend built on ``ProcessGroup(rank, size)``) is used as it is, though the API never
    registered it: collectives that need no global rank run on it (``src``/``dst`` need
    :func:`get_group_rank`, which refuses it as torch does). A group that
    ``destroy_process_group`` shut down gets torch's "is not registered" ValueError.
    """
    if group is None:
        return default_group()
    if is_non_member(group):
        return None
    if group in _world.groups:
        return group
    if isinstance(group, ProcessGroup) and not group._is_shut_down():
        return group
    raise ValueError(_not_registered(group))


def _not_registered(group: Any) -> str:
    """torch's message for a group the API does not know (never created, or destroyed)."""
    return (
        f"Group {group!r} is not registered, please create group with "
        "torch.distributed.new_group API"
    )


def info(group: Any) -> GroupInfo:
    """The registry entry of ``group`` (None: the default)."""
    pg = default_group() if group is None else group
    try:
        return _world.groups[pg]
    except (KeyError, TypeError):
        raise ValueError(_not_registered(group)) from None


def warn_not_in_group(op_name: str) -> None:
    """torch's warning for a collective called on a group this rank is not part of."""
    global_rank = _world.global_rank
    warnings.warn(
        f"Running {op_name} on global rank {global_rank} which does not belong to the given group.",
        stacklevel=3,
    )


def get_rank(group: Any = None) -> int:
    """This process's rank in ``group`` (default: the global rank); -1 outside the group.

    As torch's: the global rank translated by :func:`get_group_rank`, so a group the API did
    not create raises its "is not registered" ValueError.
    """
    if is_non_member(group):
        return -1
    default = default_group()
    if group is None or group is default:
        return default.rank()
    return get_group_rank(group, default.rank())


def get_world_size(group: Any = None) -> int:
    """Number of ranks in ``group`` (default: all); -1 outside the group.

    As in torch, ``group.size()``, for a group made with the constructor too.
    """
    if is_non_member(group):
        return -1
    return default_group().size() if group is None else group.size()


def get_backend(group: Any = None) -> Backend:
    """The backend name of ``group``, as it was requested; ValueError outside the group, as in
    torch, and torch's "is not initialized in the world group map" for a group the API did not
    create.

    The name is a label only: ``"gloo"`` (and ``"cpu:gloo"``) and ``"pyc10d"`` all run pyc10d's
    own engine, never torch's Gloo. A group created with ``backend="gloo"`` reports ``"gloo"``
    (and one created with a ``"device:backend"`` string reports that string, as torch does),
    so torch scripts that check for it keep working; ``init_process_group`` logs this once at
    INFO (logger ``pyc10d.api.init``).
    """
    if is_non_member(group):
        raise ValueError("Invalid process group specified")
    pg = default_group() if group is None else group
    registered = _world.groups.get(pg) if isinstance(pg, ProcessGroup) else None
    if registered is None:
        raise ValueError(
            f"Process group {pg} is not initialized in the world group map. "
            "Please initialize the group first."
        )
    return Backend(registered.backend)


def get_backend_config(group: Any = None) -> str:
    """The backend configuration of ``group`` (default: the default group), torch's form:
    ``"cpu:gloo,cuda:gloo"`` for a group made with ``"gloo"``, ``"cpu:pyc10d,cuda:pyc10d"``
    with the default backend; ValueError outside the group, or for a group the API does not
    know."""
    if is_non_member(group):
        raise ValueError("Invalid process group specified")
    registered = info(group)
    if registered.config is None:
        from .backend_config import BackendConfig  # it builds on this module

        registered.config = str(BackendConfig(registered.backend))
    return registered.config


def get_group_rank(group: Any, global_rank: int) -> int:
    """``global_rank``'s rank inside ``group``; ValueError if it is not a member."""
    if group is None or group is _world.default_pg:
        default_group()
        return global_rank
    return info(group).group_rank(global_rank)


def get_global_rank(group: Any, group_rank: int) -> int:
    """The global rank of rank ``group_rank`` of ``group``."""
    if group is None or group is _world.default_pg:
        default_group()
        return group_rank
    ranks = info(group).ranks
    if not 0 <= group_rank < len(ranks):
        raise ValueError(f"Group rank {group_rank} is not part of group {info(group).name}")
    return ranks[group_rank]


def get_process_group_ranks(group: Any) -> list[int]:
    """The global ranks of ``group``'s members, in group-rank order."""
    return list(info(group).ranks)


def group_rank_of(group: Any, rank: int | None, group_rank: int | None, what: str) -> int:
    """The group rank meant by torch's ``dst``/``group_dst`` (or ``src``/``group_src``) pair."""
    if rank is not None and group_rank is not None:
        raise ValueError(f"Can not specify both {what} and group_{what}")
    if group_rank is not None:
        return group_rank
    if rank is None:
        return 0
    return get_group_rank(group, rank)
