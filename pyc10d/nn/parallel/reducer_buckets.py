"""The Reducer's buckets: one flat gradient buffer per bucket and the per-parameter views of it.

Mirrors the C++ ``Reducer::Bucket``: ``buffer`` is the flat tensor that is reduced;
``views_in[i]`` is where parameter ``i``'s gradient is copied (and, with
``gradient_as_bucket_view``, what its ``.grad`` becomes); ``views_out[i]`` is the same slice of
the tensor the communication hook returned. A sparse-gradient bucket holds one parameter and
reduces its sparse gradient itself (``sparse_grad``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Bucket:
    """One bucket of gradients (torch's ``Reducer::Bucket``)."""

    index: int
    variable_indices: list[int]
    params: list[torch.Tensor]
    offsets: list[int]
    lengths: list[int]
    size_limit: int
    expect_sparse_gradient: bool
    buffer: torch.Tensor | None = None
    views_in: list[torch.Tensor] = field(default_factory=list)
    views_out: list[torch.Tensor] = field(default_factory=list)
    pending: int = 0
    future: torch.futures.Future | None = None
    sparse_grad: torch.Tensor | None = None

    def nbytes(self) -> int:
        """Bytes of the bucket's gradients (dense parameters' sizes for a sparse bucket)."""
        return sum(p.numel() * p.element_size() for p in self.params)

    def set_views_out(self, result: torch.Tensor) -> None:
        """Point ``views_out`` at the matching slices of a hook's result (flat, same length)."""
        assert self.buffer is not None
        if result.numel() != self.buffer.numel():
            raise RuntimeError(
                f"DDP communication hook returned a tensor of {result.numel()} elements for "
                f"bucket {self.index}, which holds {self.buffer.numel()}: the future must hold "
                "a tensor with the same shape as the bucket's buffer"
            )
        flat = result.reshape(-1)
        self.views_out = [
            flat[offset : offset + length].view(param.shape)
            for param, offset, length in zip(self.params, self.offsets, self.lengths, strict=True)
        ]


def same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True if ``a`` and ``b`` share memory (torch's ``Tensor::is_alias_of``)."""
    if a.is_sparse or b.is_sparse:
        return a is b
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def build_buckets(
    params: Sequence[torch.Tensor],
    bucket_indices: Sequence[Sequence[int]],
    size_limits: Sequence[int],
    expect_sparse_gradient: Sequence[bool],
    buffer_dtype: torch.dtype | None = None,
) -> tuple[list[Bucket], list[tuple[int, int]]]:
    """Buckets for ``bucket_indices`` (bucket i holds ``params[j]`` for j in the i-th list).

    The flat buffers have the parameters' dtype, or ``buffer_dtype`` if given (mixed precision).

    Returns the buckets and, per parameter, its locator ``(bucket index, index in bucket)``.
    RuntimeError (torch's texts) for a bucket mixing dtypes or devices, or a sparse bucket with
    more than one parameter.
    """
    buckets: list[Bucket] = []
    locators: list[tuple[int, int] | None] = [None] * len(params)
    for b, indices in enumerate(bucket_indices):
        members = [params[i] for i in indices]
        if not members:
            raise RuntimeError("Empty bucket specified.")
        sparse = any(expect_sparse_gradient[i] for i in indices)
        if sparse and len(indices) != 1:
            raise RuntimeError("The bucket with sparse gradient must contain exactly one variable")
        if len({p.dtype for p in members}) > 1:
            raise RuntimeError("All parameters in a bucket must have the same dtype.")
        if len({p.device for p in members}) > 1:
            raise RuntimeError("All parameters in a bucket must be placed on the same device.")
        lengths = [p.numel() for p in members]
        offsets = [sum(lengths[:k]) for k in range(len(lengths))]
        limit = size_limits[b] if b < len(size_limits) else 0
        bucket = Bucket(b, list(indices), members, offsets, lengths, limit, sparse)
        if not sparse:
            bucket.buffer = torch.zeros(
                sum(lengths), dtype=buffer_dtype or members[0].dtype, device=members[0].device
            )
            bucket.views_in = [
                bucket.buffer[offset : offset + length].view(p.shape)
                for p, offset, length in zip(members, offsets, lengths, strict=True)
            ]
            bucket.views_out = list(bucket.views_in)
        for k, i in enumerate(indices):
            if locators[i] is not None:
                raise RuntimeError(f"Parameter {i} is in more than one bucket.")
            locators[i] = (b, k)
        buckets.append(bucket)
    missing = [i for i, loc in enumerate(locators) if loc is None]
    if missing:
        raise RuntimeError(f"Parameters {missing} are in no bucket.")
    return buckets, [loc for loc in locators if loc is not None]
