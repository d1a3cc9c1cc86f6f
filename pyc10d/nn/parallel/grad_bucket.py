"""``GradBucket``: what a DDP communication hook receives (torch's ``dist.GradBucket``)."""

from __future__ import annotations

import torch


class GradBucket:
    """One bucket of gradients, flattened into a single contiguous tensor.

    ``buffer()`` is the flat tensor a hook reduces; ``gradients()`` are views of it, one per
    parameter in ``parameters()``; ``index()`` is the bucket's position and ``is_last()`` says
    whether it is the last bucket of the iteration to be reduced.
    """

    def __init__(
        self,
        index: int,
        buffer: torch.Tensor,
        parameters: list[torch.Tensor],
        offsets: list[int],
        is_last: bool,
    ) -> None:
        self._index = index
        self._buffer = buffer
        self._parameters = parameters
        self._offsets = offsets
        self._is_last = is_last

    def index(self) -> int:
        """The bucket's index (bucket 0 holds the last parameters, as in torch)."""
        return self._index

    def buffer(self) -> torch.Tensor:
        """The flat 1-D tensor holding every gradient of the bucket."""
        return self._buffer

    def set_buffer(self, buffer: torch.Tensor) -> None:
        """Replace the flat tensor (hooks that reduce into a new tensor)."""
        self._buffer = buffer

    def gradients(self) -> list[torch.Tensor]:
        """Each parameter's gradient, as a view of ``buffer()`` shaped like the parameter."""
        return [
            self._buffer[offset : offset + param.numel()].view_as(param)
            for param, offset in zip(self._parameters, self._offsets, strict=True)
        ]

    def parameters(self) -> list[torch.Tensor]:
        """The parameters whose gradients the bucket holds."""
        return list(self._parameters)

    def is_last(self) -> bool:
        """True for the bucket reduced last in the iteration."""
        return self._is_last
