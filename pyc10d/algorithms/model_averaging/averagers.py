"""Model averagers (torch's ``algorithms.model_averaging.averagers``).

A model averager is called after every optimizer step and averages the parameters across a
group on the steps its schedule picks: :class:`PeriodicModelAverager` every ``period`` steps
once ``warmup_steps`` are over. With DDP reducing gradients within subgroups (see
:mod:`pyc10d.algorithms.ddp_comm_hooks.post_localSGD_hook`) this runs post-local SGD
(https://arxiv.org/abs/1808.07217).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any

from ...api import group
from . import utils

__all__ = ["ModelAverager", "PeriodicModelAverager"]


class ModelAverager(ABC):
    """Base class of the model averagers (torch's ``ModelAverager``).

    ``process_group`` is the group to average over (None: the default group, looked up now);
    ``step`` counts the calls of :meth:`average_parameters`.
    """

    def __init__(self, process_group: Any = None) -> None:
        self.process_group = process_group if process_group is not None else group.WORLD
        if self.process_group is None:
            raise ValueError(
                "Default process group has not been initialized, "
                "please make sure to call init_process_group."
            )
        self.step = 0

    @abstractmethod
    def average_parameters(self, params: utils.Params) -> None:
        """Average ``params`` (a model's parameters or an optimizer's param_groups) if due."""
        raise NotImplementedError


class PeriodicModelAverager(ModelAverager):
    """Average the parameters every ``period`` steps after ``warmup_steps`` (torch's class).

    ValueError for ``period < 1`` or ``warmup_steps < 0``; a UserWarning for ``period == 1``
    (DDP alone would do). Averaging happens at the steps ``s >= warmup_steps`` with
    ``(s - warmup_steps) % period == 0``, counting from 0.
    """

    def __init__(self, period: int, warmup_steps: int = 0, process_group: Any = None) -> None:
        super().__init__(process_group)
        if warmup_steps < 0:
            raise ValueError("Arg ``warmup_steps`` must be a non-negative number.")
        self.warmup_steps = warmup_steps
        if period < 1:
            raise ValueError("Arg ``period`` must be a positive value.")
        if period == 1:
            warnings.warn(
                "When period is 1, no need to use model averaging because the communication cost "
                "of all-reducing parameters will be no less than the cost of all-reducing "
                "gradients by DistributedDataParallel in the backward pass. Therefore, only "
                "DistributedDataParallel should be used for this case.",
                stacklevel=2,
            )
        self.period = period

    def average_parameters(self, params: utils.Params) -> None:
        """Average the parameters with a gradient if this step is due, then count the step.

        ``params``: a model's ``parameters()`` or an optimizer's ``param_groups`` (torch's).
        """
        if self.step >= self.warmup_steps and (self.step - self.warmup_steps) % self.period == 0:
            utils.average_parameters_or_parameter_groups(params, self.process_group)
        self.step += 1
