"""What the Reducer records for ``DistributedDataParallel._get_ddp_logging_data()``.

The subset of torch's ``c10d::Logger`` runtime fields that a Python Reducer can fill: bucket
sizes, the rebuilt buckets, the last gradient-ready order, unused-parameter bytes and average
forward / backward / communication times (nanoseconds, over the iterations that synced), and
the last error DDP or the Reducer raised.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class ReducerStats:
    """Counters and timings of one Reducer."""

    iterations: int = 0
    bucket_sizes: list[int] = field(default_factory=list)
    bucket_indices: list[list[int]] = field(default_factory=list)
    has_rebuilt_buckets: bool = False
    rebuilt_bucket_sizes: list[int] = field(default_factory=list)
    rebuilt_per_bucket_param_indices: list[list[int]] = field(default_factory=list)
    rebuilt_per_bucket_size_limits: list[int] = field(default_factory=list)
    prev_iteration_grad_ready_order: list[int] = field(default_factory=list)
    unused_parameter_size: int = 0
    forward_start: float = 0.0
    backward_start: float = 0.0
    comm_start: float = 0.0
    samples: int = 0
    forward_ns: int = 0
    backward_compute_ns: int = 0
    backward_comm_ns: int = 0
    error: str | None = None  # the last error raised by DDP or its Reducer

    def record_rebuild(
        self, sizes: Sequence[int], indices: Sequence[Sequence[int]], limits: Sequence[int]
    ) -> None:
        """Remember the buckets built after the first iteration."""
        self.has_rebuilt_buckets = True
        self.rebuilt_bucket_sizes = list(sizes)
        self.rebuilt_per_bucket_param_indices = [list(b) for b in indices]
        self.rebuilt_per_bucket_size_limits = list(limits)

    def finish_backward(self, grad_ready_order: Sequence[int]) -> None:
        """Close an iteration: its gradient-ready order and timings."""
        end = time.perf_counter()
        self.prev_iteration_grad_ready_order = list(grad_ready_order)
        if self.forward_start and self.backward_start:
            self.samples += 1
            self.forward_ns += int((self.backward_start - self.forward_start) * 1e9)
            self.backward_compute_ns += int((end - self.backward_start) * 1e9)
            comm_start = self.comm_start or self.backward_start
            self.backward_comm_ns += int(max(end - comm_start, 0.0) * 1e9)
        self.comm_start = 0.0

    def averages(self) -> dict[str, int]:
        """Average times in nanoseconds (torch's ``avg_*_time`` keys)."""
        n = max(self.samples, 1)
        return {
            "avg_forward_compute_time": self.forward_ns // n,
            "avg_backward_compute_time": self.backward_compute_ns // n,
            "avg_backward_comm_time": self.backward_comm_ns // n,
        }
