"""``pyc10d.nn.SyncBatchNorm``: torch's ``nn.SyncBatchNorm`` over pyc10d's process groups, on CPU.

torch's SyncBatchNorm refuses CPU input ("expected input tensor to be on GPU or XPU or ...");
this one normalizes each channel with the statistics of the batch concatenated over the group,
whatever the device, so a DDP model with batch norm trains on N CPU ranks like one process on
the whole batch. It is a subclass of ``torch.nn.SyncBatchNorm`` (same constructor, buffers,
state dict and repr), and synchronizes through ``pyc10d``'s module API: the default group of
``pyc10d.init_process_group``, or the ``process_group`` given (a ``pyc10d.new_group`` group).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from ...api import get_world_size, is_initialized
from ._sync_batchnorm_function import sync_batch_norm

__all__ = ["SyncBatchNorm"]

# torch added the keyword-only ``bias`` to the batch norms in 2.x; older versions lack it
_TORCH_HAS_BIAS_FLAG = "bias" in inspect.signature(nn.SyncBatchNorm.__init__).parameters


class SyncBatchNorm(nn.SyncBatchNorm):
    """Batch norm whose training statistics span a process group (torch's ``nn.SyncBatchNorm``).

    Same arguments as torch's. In training mode, with pyc10d initialized and the group larger
    than one rank, the mean and variance are those of every rank's batch together (any batch
    sizes, empty ones included); otherwise (eval mode, one rank, pyc10d not initialized, or a
    rank outside ``process_group``) it is plain local ``F.batch_norm``, as torch falls back.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        """Parameters and buffers as torch's ``nn.SyncBatchNorm(...)`` makes them."""
        args = (num_features, eps, momentum, affine, track_running_stats, process_group)
        if _TORCH_HAS_BIAS_FLAG:
            super().__init__(*args, device, dtype, bias=bias)
        else:
            super().__init__(*args, device, dtype)
            if affine and not bias:
                self.register_parameter("bias", None)

    def _check_input_dim(self, input: torch.Tensor) -> None:
        """ValueError unless ``input`` is at least 2-D (torch's message)."""
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input: torch.Tensor) -> None:
        """ValueError when ``input`` has no channels (torch's message)."""
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def _average_factor(self) -> float:
        """Count this batch and return the running-statistics factor (torch's forward).

        ``momentum``, or with ``momentum=None`` 1 / batches tracked (a cumulative average).
        """
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is None:
                raise AssertionError("num_batches_tracked must not be None")
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked.item())
        return factor

    def _sync_world_size(self, bn_training: bool) -> int:
        """The size of the group to synchronize over; 1 (or -1, outside it) means: don't."""
        if not (bn_training and self.training and is_initialized()):
            return 1
        return get_world_size(self.process_group)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalize ``input`` (N, C, ...) per channel; statistics synced while training."""
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor = self._average_factor()
        # batch statistics while training, and in eval mode when there are no running ones
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        # the running statistics are updated only while training with them tracked
        use_running = not self.training or self.track_running_stats
        running_mean = self.running_mean if use_running else None
        running_var = self.running_var if use_running else None
        world_size = self._sync_world_size(bn_training)
        if world_size <= 1:
            return F.batch_norm(
                input,
                running_mean,
                running_var,
                self.weight,
                self.bias,
                bn_training,
                factor,
                self.eps,
            )
        return sync_batch_norm(
            input,
            self.weight,
            self.bias,
            running_mean,
            running_var,
            self.eps,
            factor,
            self.process_group,
            world_size,
        )

    @classmethod
    def convert_sync_batchnorm(
        cls, module: nn.Module, process_group: Any | None = None
    ) -> nn.Module:
        """Replace every ``BatchNorm*D`` in ``module``'s tree with a SyncBatchNorm (torch's).

        The new layers keep the old ones' parameters and buffers (the same tensors), training
        flag and ``qconfig``, and sync over ``process_group`` (None: the default group). A
        batch norm ``module`` itself is returned converted; any other is converted in place.
        """
        converted = module
        if isinstance(module, _BatchNorm):
            converted = cls(
                module.num_features,
                module.eps,
                module.momentum,
                module.affine,
                module.track_running_stats,
                process_group,
                bias=module.bias is not None,
            )
            if module.affine:
                with torch.no_grad():
                    converted.weight = module.weight
                    converted.bias = module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.training = module.training
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted
