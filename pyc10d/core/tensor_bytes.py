"""Byte views of tensor memory: what the transport sends from and receives into, with no copy."""

from __future__ import annotations

import ctypes

import torch


def byte_view(tensor: torch.Tensor) -> memoryview:
    """A writable ``memoryview`` over a contiguous CPU tensor's bytes (empty for no elements).

    The view does not keep ``tensor`` alive: callers hold the tensor while they use it.
    """
    if not tensor.is_contiguous():
        raise ValueError("byte_view needs a contiguous tensor")
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes == 0:
        return memoryview(bytearray())
    return memoryview((ctypes.c_ubyte * nbytes).from_address(tensor.data_ptr())).cast("B")


def flat_contiguous(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself as a 1-D view when contiguous, else a contiguous 1-D copy (a 1-D
    contiguous tensor is returned as is: a view costs more than a small collective's copies)."""
    if tensor.is_contiguous():
        return tensor if tensor.dim() == 1 else tensor.view(-1)
    return tensor.contiguous().view(-1)
