"""``compute_bucket_assignment_by_size`` against torch's ``_compute_bucket_assignment_by_size``.

The four ComputeBucketAssignmentTest cases (with the answers torch documents), sparse buckets,
``tensor_indices`` (the rebuild order), and random inputs compared with torch's own function.
"""

from __future__ import annotations

import random
import sys

import pytest
import torch
import torch.distributed as tdist

from pyc10d.nn.parallel import compute_bucket_assignment_by_size
from pyc10d.nn.parallel.bucket_assignment import MB, BucketCapacity


def _tensors(spec: list[tuple[int, torch.dtype]]) -> list[torch.Tensor]:
    return [torch.empty([n], dtype=dtype) for n, dtype in spec]


F, D = torch.float, torch.double
CASES = [
    # (tensors, limits, expected buckets, expected per-bucket limits)
    (_tensors([(100, F), (200, F), (100, F), (50, F)]), [400], [[0], [1], [2], [3]], [400] * 4),
    (
        _tensors([(50, F), (25, D)] * 3),
        [400],
        [[0, 2], [1, 3], [4], [5]],
        [400] * 4,
    ),
    (_tensors([(10, F)] * 4), [40, 80], [[0], [1, 2], [3]], [40, 80, 80]),
    (
        _tensors([(50, F), (25, D)] * 3),
        [200, 400],
        [[0], [1], [2, 4], [3, 5]],
        [200, 200, 400, 400],
    ),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_torch_cases(case):
    tensors, limits, buckets, bucket_limits = CASES[case]
    assert compute_bucket_assignment_by_size(tensors, limits) == (buckets, bucket_limits)
    assert tdist._compute_bucket_assignment_by_size(tensors, limits) == (buckets, bucket_limits)


def test_sparse_gradients_get_their_own_bucket():
    tensors = _tensors([(10, F), (10, F), (10, F), (10, F)])
    sparse = [False, True, False, False]
    ours = compute_bucket_assignment_by_size(tensors, [1000], sparse)
    assert ours == ([[0, 2, 3], [1]], [1000, 0])
    assert ours == tdist._compute_bucket_assignment_by_size(tensors, [1000], sparse)


def test_tensor_indices_keep_ready_order():
    params = _tensors([(10, F), (20, F), (30, F), (40, F)])
    order = [3, 1, 2, 0]
    ours = compute_bucket_assignment_by_size([params[i] for i in order], [80, 200], None, order)
    assert ours == ([[3], [1, 2], [0]], [80, 200, 200])
    theirs = tdist._compute_bucket_assignment_by_size(
        [params[i] for i in order], [80, 200], [False] * 4, order
    )
    assert ours == theirs


def test_errors():
    with pytest.raises(RuntimeError, match="No support for sparse tensors"):
        compute_bucket_assignment_by_size([torch.zeros(2, 2).to_sparse()], [100])
    with pytest.raises(RuntimeError):
        compute_bucket_assignment_by_size([], [100])


def test_random_inputs_match_torch():
    rng = random.Random(0)
    dtypes = [torch.float, torch.double, torch.half]
    for _ in range(200):
        count = rng.randint(1, 12)
        tensors = [
            torch.empty([rng.randint(1, 60)], dtype=rng.choice(dtypes)) for _ in range(count)
        ]
        limits = sorted(rng.randint(8, 400) for _ in range(rng.randint(1, 3)))
        sparse = [rng.random() < 0.15 for _ in range(count)]
        ours = compute_bucket_assignment_by_size(tensors, limits, sparse)
        assert ours == tdist._compute_bucket_assignment_by_size(tensors, limits, sparse)
        if len({t.dtype for t in tensors}) == 1:  # torch's map order decides otherwise
            order = list(range(count))
            rng.shuffle(order)
            ours = compute_bucket_assignment_by_size(tensors, limits, sparse, order)
            theirs = tdist._compute_bucket_assignment_by_size(tensors, limits, sparse, order)
            assert ours == theirs


def test_bucket_capacity_defaults():
    default = BucketCapacity.create(None)
    assert default.bucket_bytes_cap == 25 * MB
    assert default.first_bucket_bytes_cap == tdist._DEFAULT_FIRST_BUCKET_BYTES == MB
    assert default.initial_size_limits(False, False) == [sys.maxsize]
    assert default.initial_size_limits(True, True) == [sys.maxsize]
    assert default.initial_size_limits(False, True) == [MB, 25 * MB]
    assert default.rebuild_size_limits() == [MB, 25 * MB]
    custom = BucketCapacity.create(4)
    assert custom.first_bucket_bytes_cap == custom.bucket_bytes_cap == 4 * MB
    assert custom.initial_size_limits(False, True) == [4 * MB]
