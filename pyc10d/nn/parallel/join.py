"""The generic join context manager for uneven inputs (torch.distributed.algorithms.join).

Ranks that ran out of inputs "join": on leaving the ``with`` block they keep shadowing the
collectives of the ranks still training (through each joinable's :class:`JoinHook`) until all
have joined. Each iteration, non-joined ranks allreduce a 1 (``notify_join_context``) that the
joined ranks match with a 0, so everyone knows how many ranks are still training. Collectives go
straight to the joinables' pyc10d ProcessGroup.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any, NamedTuple

import torch

WARN_THRESHOLD = 1000


class JoinHook:
    """What a joinable does while its rank has joined: ``main_hook`` and ``post_hook``."""

    def main_hook(self) -> None:
        """Shadow one training iteration's collectives of the non-joined ranks."""

    def post_hook(self, is_last_joiner: bool) -> None:
        """Run once every rank has joined (``is_last_joiner``: this rank joined last)."""


class _JoinConfig(NamedTuple):
    """The join settings a :class:`Joinable` reads (torch's ``_JoinConfig``)."""

    enable: bool
    throw_on_early_termination: bool
    is_first_joinable: bool

    @staticmethod
    def construct_disabled_join_config() -> _JoinConfig:
        """The settings outside any join context manager."""
        return _JoinConfig(enable=False, throw_on_early_termination=False, is_first_joinable=False)


class Joinable(ABC):
    """A class usable with :class:`Join`: gives a join hook, a device and a process group."""

    @abstractmethod
    def __init__(self) -> None:
        self._join_config = _JoinConfig.construct_disabled_join_config()

    @abstractmethod
    def join_hook(self, **kwargs: Any) -> JoinHook:
        """The :class:`JoinHook` to run while this rank has joined."""

    @property
    @abstractmethod
    def join_device(self) -> torch.device:
        """The device of the join collectives."""

    @property
    @abstractmethod
    def join_process_group(self) -> Any:
        """The process group of the join collectives."""


def _allreduce(pg: Any, tensor: torch.Tensor, op: Any = None, async_op: bool = False) -> Any:
    work = pg.allreduce([tensor], op=op) if op is not None else pg.allreduce([tensor])
    if async_op:
        return work
    work.wait()
    return None


class Join:
    """Context manager: after the block, shadow other ranks' collectives until all have joined.

    With ``throw_on_early_termination`` every rank raises instead, once any rank runs out of
    inputs ("Rank N exhausted all inputs." on that rank, "Detected at least one rank that
    exhausted inputs. Throwing across all ranks." on the others).
    """

    def __init__(
        self,
        joinables: list[Joinable],
        enable: bool = True,
        throw_on_early_termination: bool = False,
        **kwargs: Any,
    ) -> None:
        if not joinables:
            raise ValueError("The join context manager requires at least one joinable")
        self._joinables = joinables
        self._join_hooks = [joinable.join_hook(**kwargs) for joinable in joinables]
        self._enable = enable
        self._throw_on_early_termination = throw_on_early_termination
        for i, joinable in enumerate(joinables):
            joinable._join_config = _JoinConfig(enable, throw_on_early_termination, i == 0)
        groups = {id(j.join_process_group) for j in joinables}
        if len(groups) > 1:
            raise ValueError("Using join context manager with multiple process groups")
        self._process_group = joinables[0].join_process_group
        self._device = joinables[0].join_device
        self._rank = self._process_group.rank()

    def __enter__(self) -> None:
        """Nothing happens on entry."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Run the main hooks until every rank has joined, then the post hooks."""
        if not self._enable or exc_type is not None:
            return
        is_last_joiner = True
        rounds = 0
        while True:
            if rounds > WARN_THRESHOLD:
                warnings.warn(
                    f"Detected uneven input skew of greater than {WARN_THRESHOLD}. This means "
                    f"that rank {self._rank} has at least {WARN_THRESHOLD} fewer inputs than "
                    "other currently-active ranks. This level of skew could lead to performance "
                    "degradation during training.",
                    stacklevel=2,
                )
            nonjoined = torch.zeros(1, device=self._device)
            _allreduce(self._process_group, nonjoined)
            if nonjoined.item() == 0:
                break
            if self._throw_on_early_termination:
                _allreduce(self._process_group, torch.ones(1, device=self._device))
                raise RuntimeError(f"Rank {self._rank} exhausted all inputs.")
            for hook in self._join_hooks:
                hook.main_hook()
            is_last_joiner = False
            rounds += 1
        for hook in self._join_hooks:
            hook.post_hook(is_last_joiner)

    @staticmethod
    def notify_join_context(joinable: Joinable) -> Any:
        """Tell joined ranks this one is still training; returns that allreduce's Work or None.

        Only the first joinable of an enabled context communicates. With
        ``throw_on_early_termination`` it also checks whether a rank has run out of inputs.
        """
        config = joinable._join_config
        if not config.is_first_joinable or not config.enable:
            return None
        pg, device = joinable.join_process_group, joinable.join_device
        work = _allreduce(pg, torch.ones(1, device=device), async_op=True)
        if config.throw_on_early_termination:
            zeros = torch.zeros(1, device=device)
            _allreduce(pg, zeros)
            if zeros.item():
                raise RuntimeError(
                    "Detected at least one rank that exhausted inputs. Throwing across all ranks."
                )
        return work
