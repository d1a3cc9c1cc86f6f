"""Per-call options from torch (``torch.distributed.AllreduceOptions`` ...) as pyc10d's own.

torch's ``dist.*`` functions, DDP's reducer and functional collectives hand a backend torch's
option objects, or none at all (``group.allreduce([t])``). pyc10d's option classes have the same
field names, so converting is copying the fields each class declares.
"""

from __future__ import annotations

import operator
from typing import Any, TypeVar

import torch.distributed as torch_dist

from ..core.reduce_op import ReduceOp
from ..process_group.options import (
    AllgatherOptions,
    AllreduceCoalescedOptions,
    AllreduceOptions,
    AllToAllOptions,
    BarrierOptions,
    BroadcastOptions,
    CollectiveOptions,
    GatherOptions,
    ReduceOptions,
    ReduceScatterOptions,
    ScatterOptions,
)

OptionsT = TypeVar("OptionsT", bound=CollectiveOptions)

_FIELDS: dict[type, tuple[str, ...]] = {
    AllreduceOptions: ("reduceOp",),
    AllreduceCoalescedOptions: ("reduceOp",),
    BroadcastOptions: ("rootRank", "rootTensor"),
    ReduceOptions: ("reduceOp", "rootRank", "rootTensor"),
    AllgatherOptions: (),
    GatherOptions: ("rootRank",),
    ScatterOptions: ("rootRank",),
    ReduceScatterOptions: ("reduceOp",),
    AllToAllOptions: (),
    BarrierOptions: ("device_ids",),
}
"""The fields each option class has beyond ``timeout`` and ``asyncOp``."""

_TORCH_OPTION_TYPES = frozenset(
    getattr(torch_dist, cls.__name__) for cls in _FIELDS if hasattr(torch_dist, cls.__name__)
)


_CACHE_LIMIT = 256
_converted: dict[tuple, CollectiveOptions] = {}
"""pyc10d options already built, keyed by class and torch's field values. pyc10d never mutates
the options it is handed, so equal settings share one object and converting is a dict lookup.
Never cached: PREMUL_SUM (torch's ReduceOp compares equal whatever the factor) and barrier
options (``device_ids`` is a list)."""

_READ_FIELDS = {
    cls: operator.attrgetter("timeout", "asyncOp", *names)
    for cls, names in _FIELDS.items()
    if "device_ids" not in names
}
"""Per class: one C-level read of every field torch's option object carries."""


def _convert(cls: type[OptionsT], opts: Any) -> OptionsT:
    ours = cls()
    ours.timeout = opts.timeout
    ours.asyncOp = opts.asyncOp
    for name in _FIELDS[cls]:
        setattr(ours, name, getattr(opts, name))
    return ours


def _cacheable(converted: CollectiveOptions) -> bool:
    return getattr(converted, "reduceOp", None) != ReduceOp.PREMUL_SUM


def from_torch(cls: type[OptionsT], opts: Any) -> OptionsT | Any:
    """A ``cls`` with the fields of torch's ``opts`` (a default one for None).

    Anything else (a pyc10d option object, or the convenience forms ``pg.allreduce(t, op)`` and
    ``pg.broadcast(t, root)``) is returned unchanged for pyc10d's group to interpret.
    """
    if opts is None:
        key: tuple = (cls,)
    elif type(opts) in _TORCH_OPTION_TYPES:
        read = _READ_FIELDS.get(cls)
        if read is None:
            return _convert(cls, opts)
        key = (cls, read(opts))
    else:
        return opts
    converted = _converted.get(key)
    if converted is None:
        converted = cls() if opts is None else _convert(cls, opts)
        if not _cacheable(converted):
            return converted
        if len(_converted) >= _CACHE_LIMIT:
            _converted.clear()
        _converted[key] = converted
    return converted  # type: ignore[return-value]
