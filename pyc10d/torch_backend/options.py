"""Per-call options from torch (``torch.distributed.AllreduceOptions`` ...) as pyc10d's own.

torch's ``dist.*`` functions, DDP's reducer and functional collectives hand a backend torch's
option objects, or none at all (``group.allreduce([t])``). pyc10d's option classes have the same
field names, so converting is copying the fields each class declares.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch.distributed as torch_dist

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

_TORCH_OPTION_TYPES = tuple(
    getattr(torch_dist, cls.__name__) for cls in _FIELDS if hasattr(torch_dist, cls.__name__)
)


def from_torch(cls: type[OptionsT], opts: Any) -> OptionsT | Any:
    """A ``cls`` with the fields of torch's ``opts`` (a default one for None).

    Anything else (a pyc10d option object, or the convenience forms ``pg.allreduce(t, op)`` and
    ``pg.broadcast(t, root)``) is returned unchanged for pyc10d's group to interpret.
    """
    if opts is None:
        return cls()
    if not isinstance(opts, _TORCH_OPTION_TYPES):
        return opts
    ours = cls()
    ours.timeout = opts.timeout
    ours.asyncOp = opts.asyncOp
    for name in _FIELDS[cls]:
        setattr(ours, name, getattr(opts, name))
    return ours
