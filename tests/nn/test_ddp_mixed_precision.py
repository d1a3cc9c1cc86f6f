"""DDP-native mixed precision (``mixed_precision=_MixedPrecision(...)``), against torch.

Each rank runs pyc10d's DDP and, on a torch Gloo group in the same process, two references:

- torch's DDP over a low-precision copy of the model, with a communication hook that reduces as
  torch's ``_reducer_allreduce_and_upcast_hook`` does (cast the bucket to ``reduce_dtype``, sum,
  divide by the world size) and keeps the result: every iteration, any configuration;
- torch's own DDP with ``mixed_precision=`` (its stream and event calls stubbed out: CPU has
  none), from the second iteration on (torch's first iteration reduces a bucket that was
  converted to ``param_dtype`` without its views: whatever the new buffer held) and with
  ``gradient_as_bucket_view=False`` (with True, torch reduces stale values from the third
  iteration on).

Before each iteration both references take pyc10d's full-precision parameters, so each
iteration's gradients are compared on their own: to 1e-5 when the reduction is in fp32; when it
is in fp16/bf16, exactly on 2 ranks and to one unit in the last place on 3 (pyc10d sums half
precision in fp32 and rounds once, Gloo rounds after each addition). The tests also mirror
torch's ``_test_ddp_native_mixed_precision`` (its four variants), ``..._ignored_params``, and
check torch's errors for bad configurations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as TorchDDP
from torch.nn.parallel.distributed import _MixedPrecision as TorchMP

import pyc10d as dist
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.nn.parallel.distributed import _MixedPrecision
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import error_of
from tests.nn.torch_reference import (
    assert_close_all,
    copy_params,
    finish_both,
    init_both,
    stub_accelerator_sync,
)

TIMEOUT = 150
STEPS = 4
LR = 0.05
ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


class MPNet(nn.Module):
    """Two layers, a frozen parameter, a float and an integer buffer; checks dtypes in forward."""

    def __init__(self, param_dtype: torch.dtype | None, buffer_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.m = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)
        self.register_buffer("buffer", torch.randn(1, 3))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.p = nn.Parameter(torch.randn(2, 3), requires_grad=False)
        self.expect = (param_dtype or torch.float32, buffer_dtype or torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        param_dtype, buffer_dtype = self.expect
        for param in self.parameters():
            assert param.dtype == param_dtype, (param.dtype, param_dtype)
        assert self.buffer.dtype == buffer_dtype, (self.buffer.dtype, buffer_dtype)
        assert x.dtype == param_dtype, (x.dtype, param_dtype)
        self.count += 1
        return self.head(torch.relu(self.m(x))) * self.buffer + self.p.sum(0)


@dataclass
class Config:
    """One mixed-precision run: the dtypes and DDP options."""

    param: torch.dtype | None
    reduce: torch.dtype | None
    buffer: torch.dtype | None
    bucket_view: bool = False
    set_to_none: bool = False
    extra: dict | None = None

    def mp(self) -> _MixedPrecision:
        return _MixedPrecision(self.param, self.reduce, self.buffer)

    def reduce_dtype(self) -> torch.dtype:
        return self.reduce or self.param or torch.float32


# torch's four seed variants, then bf16 reduced in bf16, reduce-only fp16, and with a static
# graph / unused-parameter detection (both need the low-precision gradient hooks)
FP16 = (torch.float16, torch.float32, torch.float16)
CONFIGS = {
    "no_view_no_none": Config(*FP16),
    "view_no_none": Config(*FP16, bucket_view=True),
    "view_none": Config(*FP16, bucket_view=True, set_to_none=True),
    "no_view_none": Config(*FP16, set_to_none=True),
    "bf16": Config(torch.bfloat16, None, None, bucket_view=True),
    "reduce_only": Config(None, torch.float16, None),
    "static": Config(*FP16, extra={"static_graph": True}),
    "find_unused": Config(*FP16, bucket_view=True, extra={"find_unused_parameters": True}),
}


def _inputs(rank: int, step: int) -> torch.Tensor:
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(100 * step + rank))


class _EmulatedReference:
    """torch's DDP on a low-precision copy, reducing like torch's mixed-precision hook."""

    def __init__(self, tdist, src: nn.Module, cfg: Config, world: int) -> None:
        self.low = copy.deepcopy(src)
        with torch.no_grad():
            for p in self.low.parameters():
                p.data = p.data.to(cfg.param or p.dtype)
            for b in self.low.buffers():
                if cfg.buffer is not None and torch.is_floating_point(b):
                    b.data = b.data.to(cfg.buffer)
        self.ddp = TorchDDP(self.low, bucket_cap_mb=0.0001)
        self.tdist, self.reduce, self.world = tdist, cfg.reduce_dtype(), world
        self.reduced: dict[torch.Tensor, torch.Tensor] = {}
        self.ddp.register_comm_hook(self, _emulated_hook)

    def grads(self, ours: nn.Module, x: torch.Tensor, param_dtype: torch.dtype) -> list:
        copy_params(self.low, ours)
        self.low.zero_grad(set_to_none=True)
        self.reduced.clear()
        _loss(self.ddp(x.to(param_dtype))).backward()
        return [self.reduced.get(p) if p.requires_grad else None for p in self.low.parameters()]


def _emulated_hook(state: _EmulatedReference, bucket):  # torch rejects string annotations
    wire = bucket.buffer().to(state.reduce)
    fut = state.tdist.all_reduce(wire, async_op=True).get_future()

    def done(f: torch.futures.Future) -> torch.Tensor:
        total = f.value()[0].div_(state.world)
        offset = 0
        for p in bucket.parameters():
            state.reduced[p] = total[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        return total.to(bucket.buffer().dtype)

    return fut.then(done)


def _loss(out: torch.Tensor) -> torch.Tensor:
    return out.float().square().sum()


def _tolerance(cfg: Config, world: int) -> float:
    dtype = cfg.reduce_dtype()
    if dtype == torch.float32:
        return 1e-5
    return 0.0 if world == 2 else 2 * ULP[dtype]


def _check_setup(ddp: DDP, cfg: Config) -> None:
    """What torch's seed checks after construction: buffers cast, the parameter twins."""
    assert ddp.module.buffer.dtype == (cfg.buffer or torch.float32)
    assert ddp.module.count.dtype == torch.long  # only floating-point buffers are cast
    for p in ddp.parameters():
        assert p._mp_param.dtype == (cfg.param or torch.float32)
        assert p._fp_param.dtype == torch.float32
        assert p._mp_param.untyped_storage().nbytes() == 0  # freed between iterations


def _run_config(ctx, tdist, name: str) -> None:
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    src = MPNet(cfg.param, cfg.buffer)
    emulated = _EmulatedReference(tdist, src, cfg, ctx.world_size)
    real = None
    if cfg.param is not None and not cfg.bucket_view and not cfg.extra:
        real_module = copy.deepcopy(src)
        real = TorchDDP(real_module, mixed_precision=TorchMP(cfg.param, cfg.reduce, cfg.buffer))
    model = copy.deepcopy(src)
    ddp = DDP(
        model,
        mixed_precision=cfg.mp(),
        gradient_as_bucket_view=cfg.bucket_view,
        bucket_cap_mb=0.0001,  # a bucket per parameter or two
        **(cfg.extra or {}),
    )
    _check_setup(ddp, cfg)
    tol = _tolerance(cfg, ctx.world_size)
    param_dtype = cfg.param or torch.float32
    for step in range(STEPS):
        x = _inputs(ctx.rank, step)
        expected = emulated.grads(model, x, param_dtype)
        if real is not None:
            copy_params(real_module, model)
            real.zero_grad(set_to_none=True)
            _loss(real(x)).backward()
        _loss(ddp(x)).backward()
        for n, p in ddp.named_parameters():
            assert p.dtype == torch.float32, n
            assert (p.grad is None) == (n == "module.p"), n
            assert p.grad is None or p.grad.dtype == torch.float32, n
        grads = [p.grad for p in model.parameters()]
        assert_close_all(grads, expected, f"{name} step {step} vs emulated", tol)
        if real is not None and step > 0:
            theirs = [p.grad for p in real_module.parameters()]
            assert_close_all(grads, theirs, f"{name} step {step} vs torch", tol)
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.add_(p.grad, alpha=-LR)
        ddp.zero_grad(set_to_none=cfg.set_to_none)
    assert model.count.item() == STEPS


def _eval_and_no_sync(ctx) -> None:
    """A forward without autograd runs in low precision and leaves full precision behind;
    gradients accumulated under no_sync() are reduced (in full) by the next synced backward."""
    torch.manual_seed(0)
    model = MPNet(torch.float16, torch.float16)
    ddp = DDP(model, mixed_precision=_MixedPrecision(*FP16))
    reference = copy.deepcopy(model)
    with torch.no_grad():
        out = ddp(_inputs(ctx.rank, 0))
    assert out.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with ddp.no_sync():
        _loss(ddp(_inputs(ctx.rank, 1))).backward()
    assert model.m.weight.grad.dtype == torch.float16  # accumulating, not reduced yet
    _loss(ddp(_inputs(ctx.rank, 2))).backward()
    assert model.m.weight.grad.dtype == torch.float32
    # the same two local gradients, summed in fp16 and averaged over the ranks by hand
    low = copy.deepcopy(reference).half()
    for step in (1, 2):
        _loss(low(_inputs(ctx.rank, step).half())).backward()
    for p, q in zip(model.parameters(), low.parameters(), strict=True):
        if q.grad is None:
            continue
        total = q.grad.float()
        dist.all_reduce(total)
        torch.testing.assert_close(p.grad, total / ctx.world_size, rtol=1e-5, atol=1e-5)


def _ignored_params() -> None:
    """torch's test_ddp_native_mixed_precision_ignored_params: no twins for ignored tensors."""

    class TwoLin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(10, 10, bias=False)
            self.b = nn.Linear(10, 1, bias=False)

    model = TwoLin()
    model.register_buffer("buffer", torch.ones(5))
    DDP._set_params_and_buffers_to_ignore_for_model(model, ["a.weight", "buffer"])
    net = DDP(model, mixed_precision=_MixedPrecision(*FP16), gradient_as_bucket_view=True)
    assert not hasattr(model.a.weight, "_mp_param") and not hasattr(model.a.weight, "_fp_param")
    assert model.b.weight._mp_param.dtype == torch.float16
    assert model.b.weight._fp_param.dtype == torch.float32
    assert model.buffer.dtype == torch.float32  # ignored: not cast
    assert net.mixed_precision.param_dtype == torch.float16


def _bad_configs(tdist) -> dict[str, str]:
    """torch's errors: compare each with what torch's constructor raises on this group."""
    out = {}
    cases = {
        "dict": ({"param_dtype": torch.float16}, AttributeError),
        "dtype": (torch.float16, AttributeError),
        "str_dtype": ("x", TypeError),
        "int_dtype": (torch.int32, RuntimeError),
    }
    for name, (value, kind) in cases.items():
        ours_cfg = value if name in ("dict", "dtype") else _MixedPrecision(param_dtype=value)
        theirs_cfg = value if name in ("dict", "dtype") else TorchMP(param_dtype=value)
        ours = error_of(lambda c=ours_cfg: DDP(nn.Linear(2, 2), mixed_precision=c), kind)
        theirs = error_of(lambda c=theirs_cfg: TorchDDP(nn.Linear(2, 2), mixed_precision=c), kind)
        assert ours == theirs, (name, ours, theirs)
        out[name] = ours
    # a second communication hook: torch's "only once" error (its mixed precision is one)
    ddp = DDP(nn.Linear(2, 2), mixed_precision=_MixedPrecision(*FP16))
    ours = error_of(lambda: ddp.register_comm_hook(None, lambda state, bucket: bucket.buffer()))
    tddp = TorchDDP(nn.Linear(2, 2), mixed_precision=TorchMP(*FP16))
    theirs = error_of(lambda: tddp.register_comm_hook(None, lambda state, bucket: bucket.buffer()))
    assert ours == theirs, (ours, theirs)
    out["hook_once"] = ours
    # pyc10d checks the other dtypes at construction (torch fails in the first backward)
    out["reduce_str"] = error_of(
        lambda: DDP(nn.Linear(2, 2), mixed_precision=_MixedPrecision(reduce_dtype="x")),
        TypeError,
    )
    return out


def mixed_precision(ctx, names: list[str]) -> dict[str, str]:
    tdist = init_both(ctx)
    stub_accelerator_sync()
    for name in names:
        _run_config(ctx, tdist, name)
    out = {}
    if "no_view_no_none" in names:
        _eval_and_no_sync(ctx)
        _ignored_params()
        out = _bad_configs(tdist)
    finish_both(tdist)
    return out


GROUPS = {
    "seed": ["no_view_no_none", "view_no_none", "view_none", "no_view_none"],
    "more": ["bf16", "reduce_only", "static", "find_unused"],
}


@world_sizes(2, 3)
@pytest.mark.parametrize("group", list(GROUPS))
def test_mixed_precision(world_size, group):
    for out in spawn(mixed_precision, world_size, args=(GROUPS[group],), timeout=TIMEOUT):
        if group == "seed":
            assert "object has no attribute 'param_dtype'" in out["dict"]
            assert "must be torch.dtype, not str" in out["str_dtype"]
            assert "can only be called once" in out["hook_once"]
            assert out["reduce_str"] == (
                "_MixedPrecision.reduce_dtype must be a torch.dtype or None, not str"
            )
