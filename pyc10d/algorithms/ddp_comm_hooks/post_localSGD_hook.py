"""The post-local SGD communication hook (torch's ``ddp_comm_hooks.post_localSGD_hook``).

For the first ``start_localSGD_iter`` iterations DDP averages gradients over the global group as
usual; afterwards only within a subgroup (by default one per node), or not at all, while a model
averager (:mod:`pyc10d.algorithms.model_averaging`) averages the parameters globally after the
optimizer step every few iterations.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch

from ...api import _rank_not_in_group, get_world_size, group, new_subgroups
from . import default_hooks as default

if TYPE_CHECKING:
    from ...nn.parallel.grad_bucket import GradBucket

__all__ = ["PostLocalSGDState", "post_localSGD_hook"]

logger = logging.getLogger(__name__)


class PostLocalSGDState:
    """The hook's state: global allreduce until ``start_localSGD_iter``, then in ``subgroup``.

    As torch's ``PostLocalSGDState``: ``process_group`` None means the default group; ``subgroup``
    None means one intra-node subgroup per node, made at the first local iteration (here of
    ``LOCAL_WORLD_SIZE`` consecutive ranks, else the whole world: torch sizes it by the CUDA
    device count). With ``post_local_gradient_allreduce=False`` local gradients are not reduced.
    ``iter`` counts iterations (by the last bucket of each) until local SGD starts.
    """

    __slots__ = [
        "iter",
        "post_local_gradient_allreduce",
        "process_group",
        "start_localSGD_iter",
        "subgroup",
    ]

    def __init__(
        self,
        process_group: Any,
        subgroup: Any,
        start_localSGD_iter: int,
        post_local_gradient_allreduce: bool = True,
    ) -> None:
        logger.info("Local SGD will be started after %s iterations", start_localSGD_iter)
        self.process_group = process_group  # gradients are averaged globally over this group
        self.subgroup = subgroup  # and then locally over this one
        self.start_localSGD_iter = start_localSGD_iter
        self.post_local_gradient_allreduce = post_local_gradient_allreduce
        self.iter = 0

    def maybe_increase_iter(self, bucket: GradBucket) -> None:
        """Count an iteration when ``bucket`` is its last one; log when local SGD starts."""
        if bucket.is_last():
            self.iter += 1
        if self.iter == self.start_localSGD_iter:
            logger.info("Start to apply local SGD after %s iterations.", self.iter)


def _default_subgroup_size() -> int:
    """``LOCAL_WORLD_SIZE`` (set by pyc10d-run and torchrun), else the default group's size."""
    value = os.environ.get("LOCAL_WORLD_SIZE")
    if value is None:
        return get_world_size()
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size <= 0:
        raise ValueError(
            f"post_localSGD_hook: LOCAL_WORLD_SIZE={value!r} is not a positive integer; "
            "pass PostLocalSGDState a subgroup instead"
        )
    return size


def _allreduce(process_group: Any, tensor: torch.Tensor) -> torch.futures.Future:
    """default's averaging allreduce; ValueError first if this rank is not in ``process_group``."""
    if _rank_not_in_group(process_group):
        raise ValueError(
            "post_localSGD_hook: this rank is not a member of the process group it would "
            "allreduce over (pass a group this rank belongs to)"
        )
    return default._allreduce_fut(process_group, tensor)


def post_localSGD_hook(state: PostLocalSGDState, bucket: GradBucket) -> torch.futures.Future:
    """Average the bucket globally, then after ``start_localSGD_iter`` only in the subgroup.

    torch's ``post_localSGD_hook``: register it with ``ddp.register_comm_hook(state, hook)`` and
    run a model averager after each optimizer step. The future holds the bucket's buffer.
    """
    global_group = state.process_group if state.process_group is not None else group.WORLD
    buffer = bucket.buffer()
    if state.iter < state.start_localSGD_iter:
        state.maybe_increase_iter(bucket)
        return _allreduce(global_group, buffer)
    if not state.post_local_gradient_allreduce:
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(buffer)
        return fut
    if state.subgroup is None:
        state.subgroup, _ = new_subgroups(group_size=_default_subgroup_size())
    return _allreduce(state.subgroup, buffer)
