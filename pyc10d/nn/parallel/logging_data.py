"""``DistributedDataParallel._get_ddp_logging_data()``: torch's logging dict, the keys we can fill.

Strings and ints as torch's ``c10d::Logger`` stores them: flags as 0/1, lists of sizes as
``", "``-joined strings, environment variables as their value or ``"N/A"``.
"""

from __future__ import annotations

import os
from typing import Any

from torch.nn import SyncBatchNorm  # pyc10d.nn.SyncBatchNorm subclasses it

from ...api.state import get_backend

_ENV_KEYS = {
    "master_port": "MASTER_PORT",
    "master_addr": "MASTER_ADDR",
    "torch_distributed_debug": "TORCH_DISTRIBUTED_DEBUG",
    "cuda_visible_devices": "CUDA_VISIBLE_DEVICES",
    "gloo_socket_ifname": "GLOO_SOCKET_IFNAME",
    "gloo_device_transport": "GLOO_DEVICE_TRANSPORT",
}

_DTYPE_NAMES = {
    "torch.float32": "float",
    "torch.float64": "double",
    "torch.float16": "c10::Half",
    "torch.bfloat16": "c10::BFloat16",
    "torch.complex64": "c10::complex<float>",
    "torch.complex128": "c10::complex<double>",
}


def _joined(values: list[Any], sep: str = ", ") -> str:
    return sep.join(str(v) for v in values)


def _backend_name(pg: Any) -> str:
    try:
        return str(get_backend(pg))
    except (ValueError, RuntimeError):
        return pg.name()


def ddp_logging_data(ddp: Any) -> dict[str, Any]:
    """The logging dict of one DDP module (see torch's ``test_ddp_logging_data_cpu``)."""
    reducer = ddp.reducer
    stats = reducer.stats
    params = ddp._reducer_params
    dtypes = sorted({_DTYPE_NAMES.get(str(p.dtype), str(p.dtype)) for p in params})
    data: dict[str, Any] = {
        "world_size": ddp.process_group.size(),
        "rank": ddp.process_group.rank(),
        "module_name": type(ddp.module).__name__,
        "device_ids": "",
        "output_device": -1,
        "broadcast_buffers": int(ddp.broadcast_buffers),
        "bucket_cap_bytes": ddp.bucket_bytes_cap,
        "find_unused_parameters": int(ddp.find_unused_parameters),
        "gradient_as_bucket_view": int(ddp.gradient_as_bucket_view),
        "static_graph": int(ddp.static_graph),
        "backend_name": _backend_name(ddp.process_group),
        "iteration": stats.iterations,
        "dtypes": _joined(dtypes),
        "total_parameter_size_bytes": sum(p.numel() * p.element_size() for p in params),
        "num_parameter_tensors": len(params),
        "bucket_sizes": _joined(stats.bucket_sizes),
        "is_multi_device_module": 0,
        "has_sync_bn": int(any(isinstance(m, SyncBatchNorm) for m in ddp.module.modules())),
        "join_uneven_inputs": int(ddp._uneven_input_join),
        "has_rebuilt_buckets": int(stats.has_rebuilt_buckets),
        "gloo_num_threads": int(getattr(ddp.process_group.options, "threads", 2)),
    }
    for key, var in _ENV_KEYS.items():
        data[key] = os.environ.get(var, "N/A")
    if ddp._comm_hook_name is not None:
        data["comm_hook"] = ddp._comm_hook_name
    if ddp.find_unused_parameters:
        data["unused_parameter_size"] = stats.unused_parameter_size
    if stats.has_rebuilt_buckets:
        data["rebuilt_bucket_sizes"] = _joined(stats.rebuilt_bucket_sizes)
        data["rebuilt_per_bucket_param_indices"] = _joined(
            [_joined(b, " ") for b in stats.rebuilt_per_bucket_param_indices]
        )
        data["rebuilt_per_bucket_size_limits"] = _joined(stats.rebuilt_per_bucket_size_limits)
    if stats.prev_iteration_grad_ready_order:
        data["prev_iteration_grad_ready_order_indices"] = _joined(
            stats.prev_iteration_grad_ready_order
        )
    if stats.samples:
        data.update(stats.averages())
    if stats.error is not None:  # torch's Logger::set_error_and_log
        data["has_error"] = 1
        data["error"] = stats.error
    return data
