"""The autograd Function of :class:`pyc10d.nn.SyncBatchNorm` (torch's ``SyncBatchNorm`` one).

torch's version calls CUDA-only kernels (``batch_norm_stats``, ``batch_norm_elemt``, ...); this
one uses the batch-norm kernels torch has on CPU too (``batch_norm_update_stats``, eval-mode
``batch_norm``, ``native_batch_norm_backward`` for the per-channel sums) and a few elementwise ops.

Forward: each rank computes its per-channel ``(count, mean, M2)`` (M2: the sum of squared
deviations from its own mean) in the input's accumulate dtype, one all-gather shares them, and
every rank combines them the same way in float64 (Chan et al.'s pairwise formula, weighted by
count), so ranks with different batch sizes, or an empty one, get the statistics of the
concatenated batch. Backward: one all-reduce of ``[sum(dy), sum(dy * (x - mean))]``, then the
usual batch-norm input gradient with the global count. ``weight``/``bias`` gradients stay local:
DDP averages them like any other parameter's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from ...api import all_gather_single, all_reduce

__all__ = ["SyncBatchNormFunction", "check_sync_inputs", "sync_batch_norm"]

_REDUCED_FLOATS = (torch.float16, torch.bfloat16)
_STATS_DTYPE = torch.float64  # what the gathered statistics are combined in
# the names torch's "not implemented for" errors give non-floating dtypes
_ATEN_NAMES = {
    torch.bool: "Bool",
    torch.uint8: "Byte",
    torch.int8: "Char",
    torch.int16: "Short",
    torch.int32: "Int",
    torch.int64: "Long",
    torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble",
}


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics and the normalization are computed in (float32 for half types)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _memory_format(tensor: torch.Tensor) -> torch.memory_format:
    """channels_last(_3d) when ``tensor`` is laid out so, else contiguous (as torch keeps it)."""
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if tensor.dim() == 5 and tensor.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _per_channel(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """A ``(C,)`` vector shaped ``(1, C, 1, ...)`` to broadcast against an ``ndim``-D input."""
    return values.view(1, -1, *([1] * (ndim - 2)))


def check_sync_inputs(
    input: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
) -> None:
    """Raise torch's CPU ``batch_norm`` errors before any communication (so no rank waits).

    Non-floating input: NotImplementedError; a per-channel tensor of the wrong length or a dtype
    mix torch's CPU kernel refuses (only half/bfloat16 input with float32 parameters is allowed):
    RuntimeError.
    """
    if not input.is_floating_point():
        name = _ATEN_NAMES.get(input.dtype, str(input.dtype))
        raise NotImplementedError(f"\"batch_norm\" not implemented for '{name}'")
    channels = input.size(1)
    named = {
        "running_mean": running_mean,
        "running_var": running_var,
        "weight": weight,
        "bias": bias,
    }
    for name, tensor in named.items():
        if tensor is not None and tensor.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {tensor.numel()}")
    for tensor in named.values():
        if tensor is None or tensor.dtype == input.dtype:
            continue
        if not (input.dtype in _REDUCED_FLOATS and tensor.dtype == torch.float32):
            raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")


def _local_stats(x: torch.Tensor) -> torch.Tensor:
    """This rank's ``[count, mean (C), M2 (C)]`` in float64 (zeros for an empty batch).

    The mean and biased variance come from torch's fused CPU kernel (``batch_norm_update_stats``,
    no running statistics), run in the accumulate dtype: half types are upcast first.
    """
    channels = x.size(1)
    count = x.numel() // channels
    stats = torch.zeros(2 * channels + 1, dtype=_STATS_DTYPE, device=x.device)
    stats[0] = count
    if count > 0:
        mean, var = torch.batch_norm_update_stats(x.to(_acc_dtype(x.dtype)), None, None, 0.0)
        stats[1 : channels + 1] = mean
        stats[channels + 1 :] = var.to(_STATS_DTYPE) * count
    return stats


def _local_grad_sums(
    dy: torch.Tensor, x: torch.Tensor, mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's per-channel ``sum(dy)`` and ``sum(dy * (x - mean))``, in ``mean``'s dtype.

    torch's fused ``native_batch_norm_backward`` computes both (as grad_bias, and grad_weight
    with an invstd of ones); it cannot take an empty batch, whose sums are zeros.
    """
    if x.numel() == 0:
        zeros = torch.zeros_like(mean)
        return zeros, zeros.clone()
    _, sum_dy_xmu, sum_dy = torch.ops.aten.native_batch_norm_backward(
        dy, x, None, None, None, mean, torch.ones_like(mean), True, 0.0, [False, True, True]
    )
    return sum_dy, sum_dy_xmu


def _combine(gathered: torch.Tensor, channels: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The global ``(count, mean, M2)`` of the ``(world, 2C + 1)`` gathered rank statistics.

    M2 = sum of the ranks' M2 + sum of count_r * (mean_r - mean)^2; empty ranks weigh nothing.
    """
    counts = gathered[:, :1]
    means = gathered[:, 1 : channels + 1]
    m2s = gathered[:, channels + 1 :]
    total = int(counts.sum().item())
    if total == 0:
        zeros = torch.zeros(channels, dtype=_STATS_DTYPE, device=gathered.device)
        return 0, zeros, zeros.clone()
    mean = (counts * means).sum(0) / total
    m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
    return total, mean, m2


@torch.no_grad()
def _update_running_stats(
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    momentum: float,
    count: int,
    mean: torch.Tensor,
    m2: torch.Tensor,
) -> None:
    """Blend the batch statistics into the running ones (the variance unbiased: count - 1)."""
    if running_mean is not None:
        blended = running_mean.to(_STATS_DTYPE) * (1 - momentum) + mean * momentum
        running_mean.copy_(blended)
    if running_var is not None:
        unbiased = m2 / (count - 1)
        running_var.copy_(running_var.to(_STATS_DTYPE) * (1 - momentum) + unbiased * momentum)


class SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm with statistics over a process group (torch's ``_functions.SyncBatchNorm``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: torch.Tensor,
        weight: torch.Tensor | None,
        bias: torch.Tensor | None,
        running_mean: torch.Tensor | None,
        running_var: torch.Tensor | None,
        eps: float,
        momentum: float,
        process_group: Any,
        world_size: int,
    ) -> torch.Tensor:
        """Normalize ``input`` with the group's batch statistics; update the running ones."""
        fmt = _memory_format(input)
        x = input.contiguous(memory_format=fmt)
        channels = x.size(1)
        gathered = torch.empty(world_size, 2 * channels + 1, dtype=_STATS_DTYPE, device=x.device)
        all_gather_single(gathered, _local_stats(x), group=process_group)
        count, mean, m2 = _combine(gathered, channels)
        if count == 1:  # every rank sees the same count, so every rank raises
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {count}"
            )
        if count > 1:  # an all-empty batch leaves the running statistics alone, as torch's does
            _update_running_stats(running_mean, running_var, momentum, count, mean, m2)
        acc = _acc_dtype(x.dtype)
        mean_acc, var_acc = mean.to(acc), (m2 / max(count, 1)).to(acc)
        ctx.save_for_backward(x, weight, mean_acc, torch.rsqrt(var_acc + eps))
        ctx.process_group = process_group
        ctx.count = count
        ctx.memory_format = fmt
        ctx.bias_dtype = None if bias is None else bias.dtype
        if x.numel() == 0:
            return torch.empty_like(x)
        # the elementwise part is eval-mode batch norm with the group's statistics (fused kernel;
        # half input with float32 statistics and parameters is a mix it accepts)
        out = F.batch_norm(x, mean_acc, var_acc, _as(weight, acc), _as(bias, acc), False, 0.0, eps)
        return out.contiguous(memory_format=fmt)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Input, weight and bias gradients; the input's needs one all-reduce over the group."""
        x, weight, mean, invstd = ctx.saved_tensors
        needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        dy = grad_output.contiguous(memory_format=ctx.memory_format)
        sum_dy, sum_dy_xmu = _local_grad_sums(dy, x, mean)  # zeros for an empty batch
        grad_weight = (sum_dy_xmu * invstd).to(weight.dtype) if needs_weight else None
        grad_bias = sum_dy.to(ctx.bias_dtype) if needs_bias else None
        grad_input = None
        if needs_input:
            sums = (sum_dy, sum_dy_xmu)
            grad_input = _input_grad(ctx, dy, x, weight, mean, invstd, sums)
            grad_input = grad_input.to(x.dtype).contiguous(memory_format=ctx.memory_format)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


def _input_grad(
    ctx: Any,
    dy: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor | None,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    sums: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """dx = (dy - mean(dy) - (x - mean) * invstd^2 * mean(dy * (x - mean))) * invstd * weight.

    The two means are over the group: one all-reduce of this rank's sums (in float64). Three
    elementwise passes in the accumulate dtype, keeping ``x - mean`` explicit for accuracy.
    """
    channels = mean.numel()
    totals = torch.cat(sums).to(_STATS_DTYPE)
    all_reduce(totals, group=ctx.process_group)
    totals = (totals / max(ctx.count, 1)).to(mean.dtype)
    mean_dy, mean_dy_xmu = totals[:channels], totals[channels:]
    scale = invstd if weight is None else invstd * weight.to(mean.dtype)
    ndim = x.dim()
    grad = x.to(mean.dtype) - _per_channel(mean, ndim)
    torch.addcmul(
        dy.to(mean.dtype), grad, _per_channel(-invstd * invstd * mean_dy_xmu, ndim), out=grad
    )
    torch.addcmul(_per_channel(-mean_dy * scale, ndim), grad, _per_channel(scale, ndim), out=grad)
    return grad


def _as(tensor: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``tensor`` in ``dtype`` (None stays None)."""
    return None if tensor is None else tensor.to(dtype)


def sync_batch_norm(
    input: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    eps: float,
    momentum: float,
    process_group: Any,
    world_size: int,
) -> torch.Tensor:
    """Check the inputs (torch's errors, raised before communicating), then apply the Function."""
    check_sync_inputs(input, weight, bias, running_mean, running_var)
    return SyncBatchNormFunction.apply(
        input, weight, bias, running_mean, running_var, eps, momentum, process_group, world_size
    )
