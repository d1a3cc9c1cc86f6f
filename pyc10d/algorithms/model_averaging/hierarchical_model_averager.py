"""Hierarchical model averaging (torch's ``model_averaging.hierarchical_model_averager``).

Hierarchical SGD (https://arxiv.org/abs/2010.12998): groups of increasing size average the
parameters with increasing periods, e.g. groups of 8 every 4 steps and everyone every 16.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ...api import get_process_group_ranks, get_world_size, new_subgroups_by_enumeration
from . import averagers, utils

__all__ = ["HierarchicalModelAverager"]

logger = logging.getLogger(__name__)

_PERIOD_ONE = (
    "When the maximum period in arg ``period_group_size_dict`` is 1, "
    "no need to use model averaging because the communication cost "
    "of all-reducing parameters will be no less than the cost of all-reducing gradients "
    "by DistributedDataParallel in the backward pass. Therefore, only "
    "DistributedDataParallel should be used for this case."
)


def _check_group_size(group_size: int, overall: int) -> None:
    """torch's ``new_subgroups`` checks of ``group_size`` against the overall group's size."""
    if group_size <= 0:
        raise ValueError(f"The arg 'group_size' ({group_size}) must be positive")
    if overall < group_size:
        raise ValueError(
            f"The arg 'group_size' ({group_size}) must not exceed the world size ({overall})"
        )
    if overall % group_size != 0:
        raise ValueError(f"The world size ({overall}) must be divisible by '{group_size=}'")


def _check_hierarchy(period_group_size_dict: Mapping[int, int] | None, overall: int) -> None:
    """torch's validation of the hierarchy (ValueError; a UserWarning if every period is 1)."""
    if not period_group_size_dict:
        raise ValueError("Arg ``period_group_size_dict`` must not be empty.")
    periods = list(period_group_size_dict.keys())
    if periods[0] <= 0:
        raise ValueError(
            "The minimum period in arg ``period_group_size_dict`` must be a positive value."
        )
    if periods[-1] == 1:
        warnings.warn(_PERIOD_ONE, stacklevel=3)  # the averager's caller
    last = list(period_group_size_dict.values())[-1]
    if last != overall:
        raise ValueError(
            f"The last value in arg ``period_group_size_dict`` {last} "
            f"must be equal to the size of arg ``process_group`` {overall}."
        )
    for group_size in period_group_size_dict.values():
        if group_size != overall:
            _check_group_size(group_size, overall)


class HierarchicalModelAverager(averagers.ModelAverager):
    """Average within groups of several sizes, each with its own period (torch's class).

    ``period_group_size_dict`` maps each period to a group size, in increasing order; the last
    size must be the size of ``process_group`` (None: the default group). Each smaller size gets
    consecutive subgroups of ``process_group``, as torch's ``new_subgroups`` splits it (every rank
    of the default group must construct the averager, as with torch). After ``warmup_steps``, a
    step averages within the group of the largest period dividing it, if any.
    """

    def __init__(
        self,
        period_group_size_dict: Mapping[int, int] | None = None,
        warmup_steps: int = 0,
        process_group: Any = None,
    ) -> None:
        super().__init__(process_group)
        overall = get_world_size(group=self.process_group)
        _check_hierarchy(period_group_size_dict, overall)
        assert period_group_size_dict is not None  # checked above
        if warmup_steps < 0:
            raise ValueError("Arg ``warmup_steps`` must be a non-negative number.")
        self._periods = list(period_group_size_dict.keys())
        self.period_process_group_dict: OrderedDict[int, Any] = OrderedDict()
        logger.info("Model averaging hierarchy:")
        for period, group_size in period_group_size_dict.items():
            logger.info(
                "\tEach group that has %s processes average parameters every %s iterations, "
                "if no higher-level averaging.",
                group_size,
                period,
            )
            if group_size != overall:
                self.period_process_group_dict[period] = self._subgroup(group_size)
            else:
                self.period_process_group_dict[period] = self.process_group
        self.warmup_steps = warmup_steps

    def _subgroup(self, group_size: int) -> Any:
        """This rank's group of ``group_size`` consecutive members of ``process_group``.

        What torch's ``new_subgroups(group_size, group=process_group)`` makes: the split is of
        the overall group's ranks (sizes already checked against that group's size).
        """
        ranks = get_process_group_ranks(self.process_group)
        chunks = [ranks[i : i + group_size] for i in range(0, len(ranks), group_size)]
        mine, _ = new_subgroups_by_enumeration(chunks)
        return mine

    def _find_process_group(self) -> Any:
        """The group of the largest period dividing ``step``; None if no period divides it."""
        for period in reversed(self._periods):
            if self.step % period == 0:
                return self.period_process_group_dict[period]
        return None

    def average_parameters(self, params: utils.Params) -> None:
        """Average the parameters with a gradient in this step's group, if any; count the step.

        ``params``: a model's ``parameters()`` or an optimizer's ``param_groups`` (torch's).
        """
        if self.step >= self.warmup_steps:
            process_group = self._find_process_group()
            if process_group is not None:
                utils.average_parameters_or_parameter_groups(params, process_group)
        self.step += 1
