"""Parameter averaging helpers (torch's ``algorithms.model_averaging.utils``).

:func:`average_parameters` averages tensors across a group through one flat allreduce;
:func:`get_params_to_average` picks the parameters that have a gradient, from a model's
parameters or an optimizer's ``param_groups``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ...api import _rank_not_in_group, all_reduce, get_world_size, group

__all__ = [
    "average_parameters",
    "average_parameters_or_parameter_groups",
    "get_params_to_average",
]

Params = Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]


def average_parameters(params: Iterator[torch.Tensor], process_group: Any) -> None:
    """Replace every tensor of ``params`` by its average over ``process_group`` (None: WORLD).

    As torch's: the tensors are packed into one flat buffer (in the promoted dtype of them all),
    divided by the group size, allreduced, and each ``p.data`` becomes a view of that buffer cast
    back to its own dtype. A rank outside the group returns at once and changes nothing. Unlike
    torch (whose ``torch.cat`` raises on an empty list), no tensors means nothing to do.
    """
    group_to_use = process_group if process_group is not None else group.WORLD
    if _rank_not_in_group(group_to_use):
        return
    tensors = list(params)
    if not tensors:
        return
    flat = torch.cat([p.data.reshape(-1) for p in tensors])
    flat /= get_world_size(group_to_use)
    all_reduce(flat, group=group_to_use)
    offset = 0
    for p in tensors:
        numel = p.numel()
        p.data = flat[offset : offset + numel].view_as(p).type_as(p)
        offset += numel


def get_params_to_average(params: Params) -> list[torch.nn.Parameter]:
    """The parameters that have a gradient (torch's ``get_params_to_average``).

    ``params`` is a model's ``parameters()`` or an optimizer's ``param_groups`` (dicts with a
    ``"params"`` list); anything else raises torch's NotImplementedError.
    """
    chosen: list[torch.nn.Parameter] = []
    for param in params:
        if isinstance(param, torch.nn.Parameter):
            if param.grad is not None:
                chosen.append(param)
        elif isinstance(param, dict):
            chosen.extend(p for p in param["params"] if p.grad is not None)
        else:
            raise NotImplementedError(f"Parameter input of type {type(param)} is not supported")
    return chosen


def average_parameters_or_parameter_groups(params: Params, process_group: Any) -> None:
    """Average the parameters with a gradient of a model or of optimizer ``param_groups``.

    torch's ``average_parameters_or_parameter_groups``: :func:`get_params_to_average`, then
    :func:`average_parameters` over ``process_group``.
    """
    average_parameters(iter(get_params_to_average(params)), process_group)
