"""Post-local SGD as an optimizer (torch's ``torch.distributed.optim.post_localSGD_optimizer``).

Post-local SGD (https://arxiv.org/abs/1808.07217): after a warm-up of ordinary data-parallel
training, each rank steps on its own gradients (or on gradients averaged within a subgroup, see
:mod:`pyc10d.algorithms.ddp_comm_hooks.post_localSGD_hook`) and the parameters are averaged
across ranks every few steps by a model averager.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..algorithms.model_averaging import averagers

__all__ = ["PostLocalSGDOptimizer"]


class PostLocalSGDOptimizer(torch.optim.Optimizer):
    """Run the local optimizer ``optim``, then ``averager`` (torch's ``PostLocalSGDOptimizer``).

    ``step()`` steps ``optim`` and passes its ``param_groups`` to
    ``averager.average_parameters``; the state dict carries the averager's step as ``"step"``.
    Use the averager's ``warmup_steps`` equal to the hook's ``start_localSGD_iter``. Unlike
    torch's, ``param_groups`` always reads ``optim``'s (torch's keeps the list it saw at
    construction, which ``optim.load_state_dict`` replaces).
    """

    def __init__(self, optim: torch.optim.Optimizer, averager: averagers.ModelAverager) -> None:
        # As torch's: Optimizer.__init__ is not run; everything is delegated to ``optim``.
        self.optim = optim
        self.averager = averager

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The local optimizer's ``param_groups``."""
        return self.optim.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optim.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        """The local optimizer's per-parameter ``state``."""
        return self.optim.state

    def __repr__(self) -> str:
        """The local optimizer's repr, as torch's."""
        return repr(self.optim)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """``optim.state_dict()`` plus the averager's step as ``"step"`` (torch's format).

        Reloading it resumes the averaging schedule instead of warming up again.
        """
        state_dict = self.optim.state_dict()
        state_dict["step"] = self.averager.step
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load ``optim``'s state and restore the averager's step from ``"step"``.

        Without a ``"step"`` entry, torch's UserWarning and the averager restarts at step 0.
        """
        self.optim.load_state_dict(state_dict)
        if "step" in state_dict:
            self.averager.step = state_dict["step"]
        else:
            warnings.warn(
                "Loaded state dict does not contain a step counter for an averager. "
                "Setting step counter to 0.",
                stacklevel=2,
            )
            self.averager.step = 0

    def step(self) -> None:  # type: ignore[override]
        """One step of ``optim``, then the averager on its ``param_groups`` (torch's order)."""
        self.optim.step()
        self.averager.average_parameters(params=self.param_groups)

    def zero_grad(self, set_to_none: bool = True) -> None:  # type: ignore[override]
        """``optim.zero_grad(set_to_none)``."""
        self.optim.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:  # type: ignore[override]
        """``optim.add_param_group(param_group)``: the new group is averaged from the next step."""
        self.optim.add_param_group(param_group)
