"""Per-call collective options and the process group's own options, as in ``torch.distributed``.

Attribute names and defaults are torch's (``reduceOp``, ``rootRank``, ``rootTensor``, ``timeout``,
``asyncOp``, ...). A collective's ``timeout`` defaults to :data:`UNSET_TIMEOUT` (torch's
``kUnsetTimeout``, -1 ms), meaning "use the group's timeout"; :func:`resolve_timeout` applies it.
Unknown attributes raise AttributeError, as on torch's bound option classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from ..core.reduce_op import RedOpType, ReduceOp, ReduceOpLike, to_reduce_op
from ..core.timeouts import DEFAULT_PG_TIMEOUT, to_timedelta

# The per-call option classes, which torch.distributed exports at top level (the group's own
# ``Options`` is reached as ``ProcessGroup.Options``, as in torch).
__all__ = [
    "AllToAllOptions",
    "AllgatherOptions",
    "AllreduceCoalescedOptions",
    "AllreduceOptions",
    "BarrierOptions",
    "BroadcastOptions",
    "GatherOptions",
    "ReduceOptions",
    "ReduceScatterOptions",
    "ScatterOptions",
]

UNSET_TIMEOUT = timedelta(milliseconds=-1)
"""A collective timeout that is not set (torch's ``kUnsetTimeout``): the group's applies."""

DEFAULT_THREADS = 2
"""Worker threads of a group by default (torch's ``ProcessGroupGloo._Options._threads``)."""


_NO_TIME = timedelta(0)


def is_unset_timeout(timeout: timedelta) -> bool:
    """True for :data:`UNSET_TIMEOUT` (any negative timedelta counts as unset)."""
    return timeout < _NO_TIME


def resolve_timeout(timeout: timedelta, default: timedelta) -> timedelta:
    """The timeout a collective runs under: ``timeout`` if set, else the group's ``default``."""
    return default if timeout < _NO_TIME else timeout


def _check_timedelta(value: Any) -> timedelta:
    """``value`` if it is a timedelta; TypeError otherwise (torch's setters accept only these)."""
    if not isinstance(value, timedelta):
        raise TypeError(f"timeout must be a datetime.timedelta, got {type(value).__name__}")
    return value


def _check_int(value: Any, what: str) -> int:
    """``value`` as an int (bool and non-integers rejected with TypeError, as torch does)."""
    if type(value) is int:
        return value
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    return value.__index__()


def _to_bool(owner: object, value: Any) -> bool:
    """``value`` as torch's bound ``bool`` setters take it (pybind11's conversion): a bool,
    None (False), or an object whose type defines ``__bool__`` (numbers, one-element tensors);
    anything else (a string, a list) is torch's TypeError."""
    if value is True or value is False:
        return value
    if value is None:
        return False
    to_bool = getattr(type(value), "__bool__", None)
    if to_bool is not None:
        try:
            result = to_bool(value)
        except Exception:
            result = None
        if result is True or result is False:
            return result
    cls = type(owner)
    raise TypeError(
        "(): incompatible function arguments. The following argument types are supported:\n"
        f"    1. (self: {cls.__module__}.{cls.__qualname__}, arg0: bool) -> None\n\n"
        f"Invoked with: {object.__repr__(owner)}, {value!r}"
    )


def _op_object(value: ReduceOpLike) -> ReduceOp:
    """``value`` as a :class:`ReduceOp` object (:func:`to_reduce_op`, without its generic
    conversions for the usual case of a plain member: every call builds one)."""
    if type(value) is RedOpType and value is not RedOpType.PREMUL_SUM:
        op = ReduceOp.__new__(ReduceOp)
        op.op, op._factor = value, None
        return op
    return to_reduce_op(value)


class CollectiveOptions:
    """Fields every collective's options share: ``timeout`` and ``asyncOp``."""

    __slots__ = ("_asyncOp", "_timeout")

    def __init__(self) -> None:
        self._timeout = UNSET_TIMEOUT
        self._asyncOp = True

    @property
    def asyncOp(self) -> bool:
        """Whether the caller does not wait for the Work at once (the module API's
        ``async_op``); a non-bool raises torch's TypeError (see :func:`_to_bool`)."""
        return self._asyncOp

    @asyncOp.setter
    def asyncOp(self, value: bool) -> None:
        self._asyncOp = _to_bool(self, value)

    @property
    def timeout(self) -> timedelta:
        """This call's timeout; :data:`UNSET_TIMEOUT` (the default) means the group's."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: timedelta) -> None:
        self._timeout = _check_timedelta(value)

    def _fields(self) -> dict[str, Any]:
        names = [n.lstrip("_") for c in type(self).__mro__ for n in getattr(c, "__slots__", ())]
        return {name: getattr(self, name) for name in sorted(set(names))}

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._fields().items())
        return f"{type(self).__name__}({fields})"


class ReduceOpOptions(CollectiveOptions):
    """Adds ``reduceOp`` (default ``SUM``), stored as a :class:`ReduceOp` object like torch.

    Field mixins declare no slots (bases with slots cannot be combined); the concrete option
    classes declare the storage, e.g. ``_reduceOp``.
    """

    __slots__ = ()
    _reduceOp: ReduceOp

    def __init__(self) -> None:
        super().__init__()
        self._reduceOp = _op_object(RedOpType.SUM)

    @property
    def reduceOp(self) -> ReduceOp:
        """The reduction; set it to a member (``ReduceOp.MAX``) or an op object, ours or torch's."""
        return self._reduceOp

    @reduceOp.setter
    def reduceOp(self, value: ReduceOpLike) -> None:
        self._reduceOp = _op_object(value)


class RootRankOptions(CollectiveOptions):
    """Adds ``rootRank`` (default 0)."""

    __slots__ = ()
    _rootRank: int

    def __init__(self) -> None:
        super().__init__()
        self._rootRank = 0

    @property
    def rootRank(self) -> int:
        """The rank data flows from or to."""
        return self._rootRank

    @rootRank.setter
    def rootRank(self, value: int) -> None:
        self._rootRank = _check_int(value, "rootRank")


class RootTensorOptions(RootRankOptions):
    """Adds ``rootTensor`` (default 0): which of the root's tensors is the source."""

    __slots__ = ()
    _rootTensor: int

    def __init__(self) -> None:
        super().__init__()
        self._rootTensor = 0

    @property
    def rootTensor(self) -> int:
        """Index of the root's tensor in the call's tensor list."""
        return self._rootTensor

    @rootTensor.setter
    def rootTensor(self, value: int) -> None:
        self._rootTensor = _check_int(value, "rootTensor")


class AllreduceOptions(ReduceOpOptions):
    """Options of ``allreduce``: ``reduceOp`` (SUM), ``timeout``, ``asyncOp`` (torch's)."""

    __slots__ = ("_reduceOp",)


class AllreduceCoalescedOptions(AllreduceOptions):
    """Options of ``allreduce_coalesced``; the same fields as :class:`AllreduceOptions`."""

    __slots__ = ()


class BroadcastOptions(RootTensorOptions):
    """Options of ``broadcast``: ``rootRank`` (0), ``rootTensor`` (0), ``timeout``, ``asyncOp``."""

    __slots__ = ("_rootRank", "_rootTensor")


class ReduceOptions(ReduceOpOptions, RootTensorOptions):
    """Options of ``reduce``: ``reduceOp`` (SUM), ``rootRank``, ``rootTensor`` (0), ``timeout``."""

    __slots__ = ("_reduceOp", "_rootRank", "_rootTensor")


class GatherOptions(RootRankOptions):
    """Options of ``gather``: ``rootRank`` (0), ``timeout``, ``asyncOp``."""

    __slots__ = ("_rootRank",)


class ScatterOptions(RootRankOptions):
    """Options of ``scatter``: ``rootRank`` (0), ``timeout``, ``asyncOp``."""

    __slots__ = ("_rootRank",)


class ReduceScatterOptions(ReduceOpOptions):
    """Options of ``reduce_scatter`` and its tensor forms: ``reduceOp`` (SUM), ``timeout``."""

    __slots__ = ("_reduceOp",)


class AllgatherOptions(CollectiveOptions):
    """Options of ``allgather`` and its tensor forms: ``timeout``, ``asyncOp``."""

    __slots__ = ()


class AllToAllOptions(CollectiveOptions):
    """Options of ``alltoall`` and ``alltoall_base``: ``timeout``, ``asyncOp``."""

    __slots__ = ()


class BarrierOptions(CollectiveOptions):
    """Options of ``barrier``: ``device_ids`` ([]), ``device`` (None), ``timeout``, ``asyncOp``."""

    __slots__ = ("device", "device_ids")

    def __init__(self) -> None:
        super().__init__()
        self.device_ids: list[int] = []
        self.device: Any = None


class Options:
    """Options of a process group (torch's ``ProcessGroupGloo._Options``).

    ``timeout``/``_timeout``: default for every call (30 min; a timedelta or seconds).
    ``threads``/``_threads``: worker threads (2). ``bind_host``/``advertise_host``: the address to
    listen on and the one peers dial (None: chosen by the transport). ``lazy_init``: connect
    each pair of ranks on first use instead of when the group is created (None: as
    ``PYC10D_LAZY_INIT`` / ``TORCH_GLOO_LAZY_INIT`` say; torch sets it per device, through
    ``create_device(lazy_init=...)``). ``_devices``, ``group_name``, ``global_ranks_in_group``
    and ``backend`` ("gloo") are kept as torch has them.
    """

    __slots__ = (
        "_devices",
        "_threads_value",
        "_timeout_value",
        "advertise_host",
        "backend",
        "bind_host",
        "global_ranks_in_group",
        "group_name",
        "lazy_init",
    )

    def __init__(
        self,
        timeout: timedelta | float = DEFAULT_PG_TIMEOUT,
        threads: int = DEFAULT_THREADS,
        bind_host: str | None = None,
        advertise_host: str | None = None,
        lazy_init: bool | None = None,
    ) -> None:
        self._timeout_value = DEFAULT_PG_TIMEOUT
        self._threads_value = DEFAULT_THREADS
        self.timeout = timeout
        self.threads = threads
        self.bind_host = bind_host
        self.advertise_host = advertise_host
        self.lazy_init = lazy_init
        self._devices: list[Any] = []
        self.backend = "gloo"
        self.group_name = ""
        self.global_ranks_in_group: Sequence[int] = []

    @property
    def timeout(self) -> timedelta:
        """Default timeout of the group's calls; set a timedelta or seconds (ValueError if < 0)."""
        return self._timeout_value

    @timeout.setter
    def timeout(self, value: timedelta | float) -> None:
        self._timeout_value = to_timedelta(value, "timeout")

    _timeout = timeout  # torch's name (``opts._timeout = 50.0`` reads back as 50 s)

    @property
    def threads(self) -> int:
        """How many worker threads run the group's collectives (at least 1)."""
        return self._threads_value

    @threads.setter
    def threads(self, value: int) -> None:
        value = _check_int(value, "threads")
        if value < 1:
            raise ValueError(f"threads must be at least 1, got {value}")
        self._threads_value = value

    _threads = threads  # torch's name

    def __repr__(self) -> str:
        return (
            f"Options(timeout={self.timeout!r}, threads={self.threads}, "
            f"bind_host={self.bind_host!r}, advertise_host={self.advertise_host!r}, "
            f"lazy_init={self.lazy_init!r}, group_name={self.group_name!r})"
        )
