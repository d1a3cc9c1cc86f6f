"""DDP communication hooks: allreduce, fp16/bf16 compression and PowerSGD on hand-made buckets.

Every rank can rebuild every rank's gradients (seeded by rank and step), so each checks the hooks'
results against the exact average itself. One rank function per topic, run at world sizes 2 and
3; one more runs torch's own hooks beside ours (torch's gloo group) and compares the results.
"""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

import pyc10d as dist
from pyc10d.algorithms.ddp_comm_hooks import DDPCommHookType, register_ddp_comm_hook
from pyc10d.algorithms.ddp_comm_hooks.default_hooks import (
    allreduce_hook,
    bf16_compress_hook,
    bf16_compress_wrapper,
    fp16_compress_hook,
    fp16_compress_wrapper,
)
from pyc10d.algorithms.ddp_comm_hooks.powerSGD_hook import (
    PowerSGDState,
    batched_powerSGD_hook,
    powerSGD_hook,
)
from pyc10d.nn.parallel.grad_bucket import GradBucket
from pyc10d.testing import spawn, world_sizes

TIMEOUT = 90


def _init(ctx) -> None:
    dist.init_process_group(
        "gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )


def _grads(shapes, rank: int, step: int, dtype=torch.float32) -> list[torch.Tensor]:
    """Rank ``rank``'s gradients at ``step``: the same on whichever process builds them."""
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(shape, generator=gen).to(dtype) for shape in shapes]


def _bucket(grads: list[torch.Tensor], index: int = 0, is_last: bool = True) -> GradBucket:
    """A bucket holding a flat copy of ``grads``, as DDP would hand it to a hook."""
    offsets, total = [], 0
    for grad in grads:
        offsets.append(total)
        total += grad.numel()
    buffer = torch.cat([grad.reshape(-1) for grad in grads]) if grads else torch.empty(0)
    params = [torch.empty_like(grad) for grad in grads]
    return GradBucket(index, buffer, params, offsets, is_last)


def _average(shapes, world_size: int, step: int) -> torch.Tensor:
    """The exact average over ranks of the flat buckets at ``step``."""
    flat = [torch.cat([g.reshape(-1) for g in _grads(shapes, r, step)]) for r in range(world_size)]
    return torch.stack(flat).mean(0)


# -- default hooks -----------------------------------------------------------------------------
SHAPES = [(5, 3), (7,), (2, 2, 2)]


def _default_hooks(ctx) -> None:
    _init(ctx)
    n = ctx.world_size
    expected = _average(SHAPES, n, 0)
    for group in (None, dist.group.WORLD):
        bucket = _bucket(_grads(SHAPES, ctx.rank, 0))
        result = allreduce_hook(group, bucket).wait()
        assert result is bucket.buffer()
        torch.testing.assert_close(result, expected)

    cases = [
        (fp16_compress_hook, torch.float16, 1e-2),
        (bf16_compress_hook, torch.bfloat16, 5e-2),
    ]
    for hook, dtype, tol in cases:
        bucket = _bucket(_grads(SHAPES, ctx.rank, 0))
        result = hook(None, bucket).wait()
        assert result is bucket.buffer() and result.dtype == torch.float32
        torch.testing.assert_close(result, expected, atol=tol, rtol=tol)
        # the same average as computing in ``dtype`` all along
        low = torch.stack(
            [
                torch.cat([g.reshape(-1) for g in _grads(SHAPES, r, 0)]).to(dtype).div_(n)
                for r in range(n)
            ]
        )
        torch.testing.assert_close(result, low.sum(0).float(), atol=tol, rtol=tol)

    # the wrappers around allreduce_hook are the compression hooks
    for wrapper, hook in (
        (fp16_compress_wrapper, fp16_compress_hook),
        (bf16_compress_wrapper, bf16_compress_hook),
    ):
        bucket = _bucket(_grads(SHAPES, ctx.rank, 0))
        original = bucket.buffer()
        result = wrapper(allreduce_hook)(None, bucket).wait()
        assert result is original and bucket.buffer() is original
        assert result.dtype == torch.float32
        reference = hook(None, _bucket(_grads(SHAPES, ctx.rank, 0))).wait()
        assert torch.equal(result, reference)

    # a float16 buffer stays float16 (the cast is a no-op, the division in place)
    bucket = _bucket(_grads(SHAPES, ctx.rank, 0, torch.float16))
    result = fp16_compress_hook(None, bucket).wait()
    assert result.dtype == torch.float16
    torch.testing.assert_close(result.float(), expected, atol=1e-2, rtol=1e-2)

    # register_ddp_comm_hook hands the model a (state, hook) pair
    class Model:
        def register_comm_hook(self, state, hook):
            self.registered = (state, hook)

    model = Model()
    register_ddp_comm_hook(DDPCommHookType.FP16_COMPRESS, model, "pg")
    assert model.registered == ("pg", fp16_compress_hook)
    register_ddp_comm_hook(DDPCommHookType.POWER_SGD_RANK2, model)
    state, hook = model.registered
    assert hook is powerSGD_hook and state.matrix_approximation_rank == 2
    dist.destroy_process_group()


@world_sizes(2, 3)
def test_default_hooks(world_size):
    spawn(_default_hooks, world_size, timeout=TIMEOUT)


# -- PowerSGD ----------------------------------------------------------------------------------
def _run(hook, state, shapes, rank: int, step: int, index: int = 0, is_last: bool = True):
    """(bucket, the bucket's input, the hook's result) for ``step``."""
    bucket = _bucket(_grads(shapes, rank, step), index, is_last)
    before = bucket.buffer().clone()
    return bucket, before, hook(state, bucket).wait()


def _powersgd_exact(ctx) -> None:
    """Plain allreduce before ``start_powerSGD_iter``; afterwards, full rank is exact."""
    _init(ctx)
    n = ctx.world_size
    shapes = [(8, 6), (8,), (4, 3, 2)]
    # rank 8 >= min(n, m) for every gradient; rate 0 compresses even the vector (as 8 x 1)
    state = PowerSGDState(
        None, matrix_approximation_rank=8, start_powerSGD_iter=2, min_compression_rate=0
    )
    for step in range(5):
        # both buckets in flight at once, as under DDP; bucket 0 is the last of a step
        futures = [
            powerSGD_hook(state, _bucket(_grads(shapes, ctx.rank, step), index, index == 0))
            for index in (1, 0)
        ]
        for result in torch.futures.wait_all(futures):
            torch.testing.assert_close(result, _average(shapes, n, step), atol=1e-5, rtol=1e-4)
        assert state.iter == step + 1
        if step < 2:
            assert state.compression_stats() == (0, 0, 0) and not state.error_dict
    # per bucket and compressed step: 48 + 8 + 24 elements before; (8+6)*6 + (8+1)*1 + (4+6)*4
    assert state.compression_stats() == (80 * 6 / (133 * 6), 80 * 6, 133 * 6)
    assert set(state.error_dict) == set(state.p_memory_dict) == set(state.q_memory_dict) == {0, 1}

    # the same through the stacked path (two 6 x 5 matrices), and through fp16 compression
    shapes = [(6, 5), (6, 5), (3,)]
    state = PowerSGDState(
        None,
        matrix_approximation_rank=5,
        start_powerSGD_iter=2,
        min_compression_rate=0,
        batch_tensors_with_same_shape=True,
    )
    fp16_state = PowerSGDState(
        None, matrix_approximation_rank=5, start_powerSGD_iter=2, min_compression_rate=0
    )
    for step in range(4):
        _, _, result = _run(powerSGD_hook, state, shapes, ctx.rank, step)
        torch.testing.assert_close(result, _average(shapes, n, step), atol=1e-5, rtol=1e-4)
        hook = fp16_compress_wrapper(powerSGD_hook)
        _, _, result = _run(hook, fp16_state, shapes, ctx.rank, step)
        assert result.dtype == torch.float32
        torch.testing.assert_close(result, _average(shapes, n, step), atol=5e-2, rtol=5e-2)
    assert fp16_state.error_dict[0].dtype == torch.float16

    # batched: 10 elements padded to a 4 x 4 square; rank 4 is full rank
    shapes = [(2, 3), (4,)]
    state = PowerSGDState(None, matrix_approximation_rank=4, start_powerSGD_iter=2)
    for step in range(4):
        bucket, _, result = _run(batched_powerSGD_hook, state, shapes, ctx.rank, step)
        assert result is bucket.buffer() and result.shape == (10,)
        torch.testing.assert_close(result, _average(shapes, n, step), atol=1e-5, rtol=1e-4)
    assert state.error_dict[0].shape == (16,)
    assert state.compression_stats() == (20 / 64, 20, 64)
    dist.destroy_process_group()


@world_sizes(2, 3)
def test_powersgd_exact(world_size):
    spawn(_powersgd_exact, world_size, timeout=TIMEOUT)


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor``, stacked in rank order."""
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor)
    return torch.stack(out)


def _powersgd_low_rank(ctx, warm_start: bool) -> list[list[float]]:
    """Rank 1: the projection of the average on P, the same everywhere, with errors memorized."""
    _init(ctx)
    shapes = [(16, 12), (12,)]  # the vector is not worth compressing: it is sent as it is
    state = PowerSGDState(None, start_powerSGD_iter=2, warm_start=warm_start, random_seed=7)
    results, error = [], torch.zeros(16 * 12 + 12)
    for step in range(5):
        bucket, before, result = _run(powerSGD_hook, state, shapes, ctx.rank, step)
        if step < 2:
            torch.testing.assert_close(result, _average(shapes, ctx.world_size, step))
            assert not state.error_dict
            continue
        fed = before + error  # what this rank put in: its gradient plus its last error
        mean = _gather(fed).mean(0)
        matrix, vector = bucket.gradients()
        torch.testing.assert_close(vector, mean[-12:])
        assert torch.linalg.matrix_rank(matrix).item() == 1
        if warm_start:  # P (kept) spans the result: P P^T times the average
            p = state.p_memory_dict[0].view(16, 1)
            expected = p @ p.T @ mean[:-12].view(16, 12)
            torch.testing.assert_close(matrix, expected, atol=1e-5, rtol=1e-4)
        else:
            assert not state.p_memory_dict and not state.q_memory_dict
        error = state.error_dict[0]
        torch.testing.assert_close(error, fed - result)
        results.append(result.tolist())
    assert state.iter == 5
    assert state.compression_stats()[1:] == (3 * 204, 3 * (28 + 12))

    # a pickled state (process group left out, then the default group) carries on identically
    clone = pickle.loads(pickle.dumps(state))
    assert clone.process_group is dist.group.WORLD and state.process_group is None
    assert clone.iter == state.iter and torch.equal(clone.error_dict[0], state.error_dict[0])
    _, _, ours = _run(powerSGD_hook, state, shapes, ctx.rank, 5)
    _, _, theirs = _run(powerSGD_hook, clone, shapes, ctx.rank, 5)
    assert torch.equal(ours, theirs)
    dist.destroy_process_group()
    return results


@pytest.mark.parametrize(
    ("world_size", "warm_start"), [(2, True), (3, True), (2, False)], ids=["2", "3", "2-cold"]
)
def test_powersgd_low_rank(world_size, warm_start):
    results = spawn(_powersgd_low_rank, world_size, args=(warm_start,), timeout=TIMEOUT)
    assert len(results[0]) == 3
    assert all(r == results[0] for r in results)  # bit-identical on every rank


# -- torch's own hooks, beside ours --------------------------------------------------------------
def _torch_parity(ctx) -> None:
    import torch.distributed as tdist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks as torch_default
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as torch_powersgd

    _init(ctx)
    tdist.init_process_group(
        "gloo",
        init_method=f"file://{ctx.path('torch_init')}",
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    for ours, theirs in (
        (allreduce_hook, torch_default.allreduce_hook),
        (fp16_compress_hook, torch_default.fp16_compress_hook),
        (bf16_compress_hook, torch_default.bf16_compress_hook),
    ):
        a = ours(None, _bucket(_grads(SHAPES, ctx.rank, 0))).wait()
        b = theirs(None, _bucket(_grads(SHAPES, ctx.rank, 0))).wait()
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

    # rank 3: QR for P and Q; (10, 8, 2) is viewed as 10 x 16; the vector goes uncompressed
    shapes = [(16, 12), (12,), (10, 8, 2)]
    kwargs = dict(matrix_approximation_rank=3, start_powerSGD_iter=2, random_seed=3)
    ours_state = PowerSGDState(None, **kwargs)
    theirs_state = torch_powersgd.PowerSGDState(None, **kwargs)
    for step in range(5):
        for index, is_last in ((1, False), (0, True)):
            _, _, a = _run(powerSGD_hook, ours_state, shapes, ctx.rank, step, index, is_last)
            _, _, b = _run(
                torch_powersgd.powerSGD_hook, theirs_state, shapes, ctx.rank, step, index, is_last
            )
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert ours_state.compression_stats() == theirs_state.compression_stats()
    assert ours_state.iter == theirs_state.iter == 5
    for index in (0, 1):
        torch.testing.assert_close(
            ours_state.error_dict[index], theirs_state.error_dict[index], atol=1e-5, rtol=1e-4
        )
    # Keep torch's group alive until the process exits: a Gloo worker thread may still hold the
    # last reference to one of its finished Works, and dropping the group there runs its
    # destructor on that thread, which then joins itself (SIGABRT, "Resource deadlock avoided").
    _TORCH_GROUPS_KEPT.append(tdist.group.WORLD)
    tdist.destroy_process_group()
    dist.destroy_process_group()


_TORCH_GROUPS_KEPT: list = []


def test_same_results_as_torch():
    spawn(_torch_parity, 2, timeout=TIMEOUT)


# -- in this process ---------------------------------------------------------------------------
def test_state_arguments_and_pickling(caplog):
    with pytest.raises(ValueError, match="start_powerSGD_iter` > 1"):
        PowerSGDState(None, start_powerSGD_iter=1)
    PowerSGDState(None, start_powerSGD_iter=0, use_error_feedback=False, warm_start=False)

    state = PowerSGDState(None, matrix_approximation_rank=2, compression_stats_logging_frequency=0)
    assert state.compression_stats_logging_frequency == 1
    assert state.compression_stats() == (0, 0, 0)
    state.error_dict[3] = torch.arange(4.0)
    state.iter, state.total_numel_before_compression, state.total_numel_after_compression = 7, 9, 3
    state.rng.randint(10)
    with caplog.at_level(logging.WARNING):
        clone = pickle.loads(pickle.dumps(state))
    assert "excluded from a saved state" in caplog.text and "default group" in caplog.text
    assert clone.process_group is None  # no default group in this process
    assert clone.matrix_approximation_rank == 2 and clone.iter == 7
    assert clone.compression_stats() == (3.0, 9, 3)
    assert torch.equal(clone.error_dict[3], torch.arange(4.0))
    assert [clone.rng.randint(10**9) for _ in range(3)] == [
        state.rng.randint(10**9) for _ in range(3)
    ]


def test_q_seeds_are_numpys():
    """The seeds of Q follow numpy's legacy RandomState, as torch's do (a wrong seed: numpy's
    ValueError)."""
    for seed in (0, 3, 2**32 - 1):
        state = PowerSGDState(process_group=None, random_seed=seed)
        theirs = np.random.RandomState(seed)
        assert [int(state.rng.randint(10**9)) for _ in range(50)] == [
            int(theirs.randint(10**9)) for _ in range(50)
        ]
    with pytest.raises(ValueError):
        PowerSGDState(process_group=None, random_seed=-1)
