"""``DistributedSampler``: each rank iterates its own, equally long share of a dataset."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized
from typing import TypeVar

import torch
from torch.utils.data import Sampler

T_co = TypeVar("T_co", covariant=True)


class DistributedSampler(Sampler[T_co]):
    """torch.utils.data.distributed.DistributedSampler, with the same indices for the same inputs.

    Rank ``r`` of ``num_replicas`` gets indices ``r, r + num_replicas, ...`` of the (shuffled,
    seeded with ``seed + epoch``) index list, padded by repeating it from the start, or with
    ``drop_last`` cut, so that every rank gets the same count. ``num_replicas`` and ``rank``
    default to the default group's world size and rank (ValueError if it is not initialized).
    Call :meth:`set_epoch` before each epoch to get a new shuffle.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if num_replicas is None or rank is None:
            from ..api import get_rank, get_world_size  # the api imports torch-heavy modules

            if num_replicas is None:
                num_replicas = get_world_size()
            if rank is None:
                rank = get_rank()
        if rank >= num_replicas or rank < 0:
            raise ValueError(
                f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]"
            )
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.drop_last = drop_last
        size = len(dataset)
        if drop_last and size % num_replicas != 0:
            # the largest share every rank can get without repeating an index
            self.num_samples = math.ceil((size - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(size / num_replicas)
        self.total_size = self.num_samples * num_replicas
        self.shuffle = shuffle
        self.seed = seed

    def _all_indices(self) -> list[int]:
        """The index list over all ranks: shuffled (or not), then padded or cut to total_size."""
        size = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order: list[int] = torch.randperm(size, generator=generator).tolist()
        else:
            order = list(range(size))
        if self.drop_last:
            return order[: self.total_size]
        missing = self.total_size - size
        if missing > 0:
            repeats = math.ceil(missing / size)  # size > 0 here: total_size > 0 needs it
            order = order + (order * repeats)[:missing]
        return order

    def __iter__(self) -> Iterator[T_co]:
        """This rank's indices for the current epoch."""
        return iter(self._all_indices()[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        """The number of indices each rank gets (``num_samples``)."""
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch; with ``shuffle`` each epoch gets its own order, the same on all ranks."""
        self.epoch = epoch
