"""How DDP groups parameters into gradient buckets (torch's ``_compute_bucket_assignment_by_size``).

Also the bucket-size defaults: a small first bucket (1 MiB) so that the first allreduce starts
early, then ``bucket_cap_mb`` (25 MiB by default), as torch's ``_BucketCapacityConfig`` does.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

MB = 1024 * 1024
DEFAULT_BUCKET_CAP_MB = 25
DEFAULT_FIRST_BUCKET_BYTES = 1 * MB  # torch.distributed._DEFAULT_FIRST_BUCKET_BYTES


def compute_bucket_assignment_by_size(
    tensors: Sequence[torch.Tensor],
    size_limits: Sequence[int],
    expect_sparse_gradient: Sequence[bool] | None = None,
    tensor_indices: Sequence[int] | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Group tensors into buckets of at most about ``size_limits`` bytes; torch's semantics.

    Returns ``(bucket_indices, per_bucket_size_limits)``. Tensors are taken in order and only
    share a bucket with tensors of the same dtype and device; a bucket closes once its size
    reaches its limit, and each dtype then moves on to the next limit of ``size_limits`` (the last
    one repeats). A tensor expecting a sparse gradient gets a bucket of its own (limit 0). Bucket
    ``i`` holds indices into ``tensors`` or, when ``tensor_indices`` is given, the matching
    entries of it (``expect_sparse_gradient`` is then indexed by those). Without
    ``tensor_indices`` buckets are sorted by their smallest index; with it (the order gradients
    became ready) they stay in the order they closed, still-open ones last.
    """
    sparse = list(expect_sparse_gradient or [])
    indices = list(tensor_indices or [])
    if not tensors:
        raise RuntimeError("compute_bucket_assignment_by_size: expected at least one tensor")
    if not size_limits:
        raise RuntimeError("compute_bucket_assignment_by_size: expected at least one size limit")
    if sparse and len(sparse) != len(tensors):
        raise RuntimeError(
            f"expect_sparse_gradient has {len(sparse)} entries, but there are "
            f"{len(tensors)} tensors"
        )
    if indices and len(indices) != len(tensors):
        raise RuntimeError(
            f"tensor_indices has {len(indices)} entries, but there are {len(tensors)} tensors"
        )

    result: list[tuple[list[int], int]] = []
    open_buckets: dict[tuple, _Accumulator] = {}  # insertion order: first seen first
    limit_position: dict[tuple, int] = {}
    for i, tensor in enumerate(tensors):
        if tensor.is_sparse:
            raise RuntimeError("No support for sparse tensors.")
        index = indices[i] if indices else i
        if sparse and sparse[index]:
            result.append(([index], 0))  # sparse gradients: own bucket, no size limit
            continue
        key = (tensor.dtype, tensor.device)
        bucket = open_buckets.setdefault(key, _Accumulator())
        bucket.indices.append(index)
        bucket.size += tensor.numel() * tensor.element_size()
        position = limit_position.setdefault(key, 0)
        bucket.size_limit = size_limits[position]
        if bucket.size >= bucket.size_limit:
            result.append((bucket.indices, bucket.size_limit))
            open_buckets[key] = _Accumulator()
            limit_position[key] = min(position + 1, len(size_limits) - 1)
    result.extend((b.indices, b.size_limit) for b in open_buckets.values() if b.indices)
    if not indices:
        result.sort(key=lambda entry: min(entry[0]))
    return [entry[0] for entry in result], [entry[1] for entry in result]


@dataclass
class _Accumulator:
    """An open bucket: its tensor indices, their bytes, and the limit it is filled against."""

    indices: list[int] = field(default_factory=list)
    size: int = 0
    size_limit: int = 0


@dataclass(frozen=True)
class BucketCapacity:
    """DDP's bucket caps in bytes (torch's ``_BucketCapacityConfig``, without per-bucket lists).

    ``first_bucket_bytes_cap`` is 1 MiB when ``bucket_cap_mb`` was left at its default, else the
    same as ``bucket_bytes_cap``.
    """

    bucket_bytes_cap: int
    first_bucket_bytes_cap: int

    @classmethod
    def create(cls, bucket_cap_mb: float | None) -> BucketCapacity:
        """The caps for DDP's ``bucket_cap_mb`` argument (None: 25 MiB, first bucket 1 MiB)."""
        if bucket_cap_mb is None:
            return cls(int(DEFAULT_BUCKET_CAP_MB * MB), DEFAULT_FIRST_BUCKET_BYTES)
        cap = int(bucket_cap_mb * MB)
        return cls(cap, cap)

    def initial_size_limits(self, static_graph: bool, find_unused_parameters: bool) -> list[int]:
        """Limits for the buckets built at construction, as in torch.

        Without unused-parameter detection (or with a static graph) every gradient starts in one
        bucket, since the definition order may not be the order gradients become ready; buckets
        are rebuilt after the first iteration in the order they actually did.
        """
        if static_graph or not find_unused_parameters:
            return [sys.maxsize]
        if self.first_bucket_bytes_cap < self.bucket_bytes_cap:
            return [self.first_bucket_bytes_cap, self.bucket_bytes_cap]
        return [self.bucket_bytes_cap]

    def rebuild_size_limits(self) -> list[int]:
        """Limits for the buckets rebuilt after the first iteration (first bucket small)."""
        return [self.first_bucket_bytes_cap, self.bucket_bytes_cap]
