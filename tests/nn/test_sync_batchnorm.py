"""``pyc10d.nn.SyncBatchNorm`` on CPU: N ranks normalize like one process on the whole batch.

Parity: each rank runs the layer on its slice of a batch and a ``torch.nn.BatchNorm*d`` runs on
the concatenated batch; outputs, input gradients, weight/bias gradients (summed over the ranks),
running statistics and ``num_batches_tracked`` agree (1e-5 in fp32) over 3 steps, for 1D/2D/3D
layers, channels-last inputs, uneven and empty per-rank batches, no affine, no bias, no running
statistics, ``momentum=None``, float64, float16 and bfloat16 (against an fp32 reference). Eval
mode runs on rank 0 alone (it must not communicate). The DDP tests mirror torch's
``test_DistributedDataParallel_SyncBatchNorm*``, ``test_sync_batch_norm_empty_input`` and
``test_sync_batch_norm_only_empty_input`` with pyc10d's DDP; then a subgroup of a world of 3, bad
input (torch's errors, raised on every rank before any communication), and the single-process
behaviour (conversion, fallback to plain batch norm).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import pyc10d as dist
from pyc10d.nn import SyncBatchNorm
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import assert_same_across_ranks, error_of, init, sgd_step

TIMEOUT = 120
STEPS = 3
LR = 0.1
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
TOLERANCE = {  # (rtol, atol) against the reference (fp32, or fp32 for the reduced types)
    torch.float32: (1e-5, 1e-5),
    torch.float64: (1e-10, 1e-10),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (4e-2, 4e-2),
}


# -- parity with one process on the whole batch -------------------------------------------------
def _equal_sizes(per_rank: int) -> Callable[[int], list[int]]:
    return lambda world_size: [per_rank] * world_size


@dataclass
class Case:
    """One parity configuration: the per-sample shape (C first), layer kwargs, batch sizes."""

    sample: tuple[int, ...]
    kwargs: dict = field(default_factory=dict)
    sizes: Callable[[int], list[int]] = field(default=_equal_sizes(3))
    memory_format: torch.memory_format = torch.contiguous_format
    dtype: torch.dtype = torch.float32


CASES = {
    "bn1d_2d_input": Case((4,)),
    "bn1d_3d_input": Case((4, 7)),
    "bn2d": Case((3, 5, 4)),
    "bn3d": Case((2, 3, 4, 5)),
    "channels_last": Case((3, 5, 4), memory_format=torch.channels_last),
    "channels_last_3d": Case((2, 3, 4, 5), memory_format=torch.channels_last_3d),
    "uneven_sizes": Case((3, 5, 4), sizes=lambda n: [r + 1 for r in range(n)]),
    "rank0_empty": Case((3, 5, 4), sizes=lambda n: [0] + [4] * (n - 1)),
    "single_input_per_process": Case((4,), sizes=_equal_sizes(1)),
    "no_affine": Case((3, 5, 4), kwargs={"affine": False}),
    "no_bias": Case((3, 5, 4), kwargs={"bias": False}),
    "no_running_stats": Case((3, 5, 4), kwargs={"track_running_stats": False}),
    "cumulative_average": Case((3, 5, 4), kwargs={"momentum": None}),
    "float64": Case((3, 5, 4), dtype=torch.float64),
    "float16": Case((3, 5, 4), dtype=torch.float16),
    "bfloat16": Case((3, 5, 4), dtype=torch.bfloat16),
}


def _data(seed: int, total: int, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (nonzero mean, in the case's dtype) and the output weights of its loss."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(total, *case.sample, generator=g) * 2 + 5).to(case.dtype)
    w = torch.randn(x.shape, generator=g).to(case.dtype).to(_ref_dtype(case))  # exact in dtype
    return x.contiguous(memory_format=case.memory_format), w


def _ref_dtype(case: Case) -> torch.dtype:
    """The reference computes in fp64 for fp64 cases, else in fp32."""
    return torch.float64 if case.dtype == torch.float64 else torch.float32


def _layers(case: Case) -> tuple[nn.Module, SyncBatchNorm]:
    """The reference batch norm (fp32, or fp64) and a converted copy in the case's dtype."""
    torch.manual_seed(0)
    ref = TORCH_BN[len(case.sample) + 1](case.sample[0], **case.kwargs)
    ref = ref.to(_ref_dtype(case))
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(0.5, 1.5)
    return ref, SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(ref).to(case.dtype))


def _check(name: str, actual: torch.Tensor | None, expected: torch.Tensor | None, tol) -> None:
    if expected is None:
        assert actual is None, name
        return
    actual = actual.to(expected.dtype)
    torch.testing.assert_close(
        actual, expected, rtol=tol[0], atol=tol[1], msg=lambda m: f"{name}: {m}"
    )


def _summed_grads(layer: nn.Module) -> list[torch.Tensor]:
    grads = [p.grad.detach().double() for p in layer.parameters()]
    for g in grads:
        dist.all_reduce(g)
    return grads


def _step(case: Case, ref: nn.Module, layer: SyncBatchNorm, step: int, name: str) -> None:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    sizes = case.sizes(world_size)
    mine = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    x, w = _data(step, sum(sizes), case)
    tol = TOLERANCE[case.dtype]
    ref_x = x.to(_ref_dtype(case)).requires_grad_()
    local = x[mine].detach().requires_grad_()
    ref_out = ref(ref_x)
    out = layer(local)
    assert out.dtype == case.dtype and out.is_contiguous(memory_format=case.memory_format), name
    (ref_out * w).sum().backward()
    (out * w[mine]).sum().backward()
    _check(f"{name}: output", out, ref_out[mine].detach(), tol)
    _check(f"{name}: input grad", local.grad, ref_x.grad[mine], tol)
    for what, g, q in zip(("weight", "bias"), _summed_grads(layer), ref.parameters(), strict=False):
        _check(f"{name}: {what} grad", g, q.grad, tol)
    for (buf, mine_buf), theirs in zip(layer.named_buffers(), ref.buffers(), strict=True):
        _check(f"{name}: {buf}", mine_buf, theirs, tol)
    for p, q in zip(layer.parameters(), ref.parameters(), strict=True):
        with torch.no_grad():
            q.add_(q.grad, alpha=-LR)
            p.copy_(q)
            p.grad, q.grad = None, None


def _eval_on_rank0(case: Case, ref: nn.Module, layer: SyncBatchNorm, name: str) -> None:
    """Eval mode on rank 0 only: uses the running statistics and must not communicate."""
    if dist.get_rank() == 0:
        ref.eval()
        layer.eval()
        x, _ = _data(99, 4, case)
        for _ in range(2):
            _check(f"{name}: eval", layer(x), ref(x.to(_ref_dtype(case))), TOLERANCE[case.dtype])
    dist.barrier()


def parity(ctx) -> list[str]:
    init(ctx)
    for name, case in CASES.items():
        ref, layer = _layers(case)
        for step in range(STEPS):
            _step(case, ref, layer, step, name)
        _eval_on_rank0(case, ref, layer, name)
    dist.destroy_process_group()
    return list(CASES)


@world_sizes(2, 3)
def test_sync_batchnorm_matches_batchnorm_on_the_whole_batch(world_size):
    assert spawn(parity, world_size, timeout=TIMEOUT) == [list(CASES)] * world_size


# -- DDP: torch's test_DistributedDataParallel_SyncBatchNorm* -----------------------------------
class BatchNormNet(nn.Module):
    """torch's test model: linear, BatchNorm1d over (N, 4, 10), linear, softmax."""

    def __init__(self, affine: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 40, bias=False)
        self.bn = nn.BatchNorm1d(4, affine=affine)
        self.fc2 = nn.Linear(40, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.fc1(x).reshape(-1, 4, 10))
        return torch.softmax(self.fc2(x.reshape(-1, 40)), dim=1)


@dataclass
class DDPCase:
    """A model (a BatchNorm*d in it, converted for DDP), input/target shape, per-rank sizes."""

    model: Callable[[], nn.Module]
    sample: tuple[int, ...]
    target: tuple[int, ...]
    sizes: Callable[[int], list[int]] = field(default=_equal_sizes(2))
    memory_format: torch.memory_format = torch.contiguous_format


DDP_CASES = {
    "batchnorm_net": DDPCase(BatchNormNet, (2,), (4,)),
    "no_affine": DDPCase(lambda: BatchNormNet(affine=False), (2,), (4,)),
    "diff_input_sizes_gradient": DDPCase(
        BatchNormNet, (2,), (4,), sizes=lambda n: [r + 2 for r in range(n)]
    ),
    "2d_input": DDPCase(lambda: nn.BatchNorm1d(2), (2,), (2,)),
    "single_input_per_process": DDPCase(lambda: nn.BatchNorm1d(2), (2,), (2,), _equal_sizes(1)),
    "channels_last": DDPCase(
        lambda: nn.BatchNorm2d(2, momentum=0.99),
        (2, 4, 4),
        (2, 4, 4),
        memory_format=torch.channels_last,
    ),
    "channels_last_3d": DDPCase(
        lambda: nn.BatchNorm3d(2, momentum=0.99),
        (2, 4, 4, 4),
        (2, 4, 4, 4),
        memory_format=torch.channels_last_3d,
    ),
}


def _pickled(model: nn.Module) -> nn.Module:
    """``model`` through torch.save / torch.load (as torch's test does with the DDP model)."""
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def _ddp_train(case: DDPCase, name: str) -> None:
    """5 iterations: DDP(SyncBatchNorm model) on slices vs the plain model on the whole batch."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    sizes = case.sizes(world_size)
    total, mine = sum(sizes), slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    torch.manual_seed(0)
    reference = case.model()
    ddp = _pickled(DDP(SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(reference))))
    assert ddp._get_ddp_logging_data()["has_sync_bn"] == 1, name
    g = torch.Generator().manual_seed(1)
    x = torch.randn(total, *case.sample, generator=g).contiguous(memory_format=case.memory_format)
    y = torch.randn(total, *case.target, generator=g).contiguous(memory_format=case.memory_format)
    for _ in range(5):
        ref_out = reference(x)
        nn.functional.mse_loss(ref_out, y).backward()
        out = ddp(x[mine])
        # the local mean loss, scaled so that DDP's average is the whole batch's mean
        (nn.functional.mse_loss(out, y[mine]) * world_size * sizes[rank] / total).backward()
        assert out.is_contiguous(memory_format=case.memory_format), name
        sgd_step(reference, 1.0)
        sgd_step(ddp, 1.0)
        reference.zero_grad()
        ddp.zero_grad()
        for p, q in zip(ddp.module.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
        for b, c in zip(ddp.module.buffers(), reference.buffers(), strict=True):
            torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
        order = torch.randperm(total, generator=g)
        x, y = x[order], y[order]


def _diff_input_sizes_running_value() -> None:
    """Rank i holds 2 x 2 x 10**(i+1) constant values: running stats = the whole batch's."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    model = DDP(SyncBatchNorm(2, momentum=0.99))
    inputs = [
        torch.cat([torch.full((2, 1, 10 ** (i + 1)), c ** (i - 1)) for c in (0.1, 0.3)], dim=1)
        for i in range(world_size)
    ]
    everything = torch.cat([t.permute(1, 0, 2).reshape(2, -1) for t in inputs], dim=1)
    for _ in range(10):
        model(inputs[rank]).mean().backward()
    torch.testing.assert_close(model.module.running_mean, everything.mean(1))
    torch.testing.assert_close(model.module.running_var, everything.var(1))


def _half() -> None:
    """A half model converted and wrapped: output and gradients stay float16."""
    model = DDP(SyncBatchNorm.convert_sync_batchnorm(BatchNormNet().half()))
    out = model(torch.randn(2, 2, dtype=torch.float16))
    assert out.dtype == torch.float16
    out.sum().backward()
    assert all(p.grad.dtype == torch.float16 for p in model.parameters())
    assert_same_across_ranks([model.module.bn.running_mean, model.module.bn.running_var])


def ddp_parity(ctx) -> list[str]:
    init(ctx)
    for name, case in DDP_CASES.items():
        _ddp_train(case, name)
    _diff_input_sizes_running_value()
    _half()
    dist.destroy_process_group()
    return list(DDP_CASES)


@world_sizes(2, 3)
def test_ddp_with_sync_batchnorm_matches_single_process(world_size):
    assert spawn(ddp_parity, world_size, timeout=TIMEOUT) == [list(DDP_CASES)] * world_size


# -- DDP: torch's test_sync_batch_norm_empty_input / _only_empty_input ---------------------------
def _not_nan(model: nn.Module, x: torch.Tensor) -> None:
    y = model(x)
    assert not y.isnan().any()
    y.sum().backward()
    for p in model.parameters():
        assert p.grad is not None and not p.grad.isnan().any()


def _converted_ddp(model: nn.Module) -> nn.Module:
    """torch's order: wrap in DDP first, then convert the batch norms inside the wrapper."""
    return SyncBatchNorm.convert_sync_batchnorm(DDP(model), process_group=dist.group.WORLD)


def empty_inputs(ctx) -> bool:
    init(ctx)
    rank = ctx.rank
    torch.manual_seed(0)
    model = _converted_ddp(nn.Sequential(nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2), nn.Linear(28, 2)))
    assert isinstance(model.module[1], SyncBatchNorm)
    _not_nan(model, torch.zeros(3 if rank else 0, 2, 30, 30))  # rank 0 empty
    before = model.module[1].running_mean.clone()
    _not_nan(model, torch.zeros(0, 2, 30, 30))  # every rank empty
    assert torch.equal(model.module[1].running_mean, before)  # nothing to average in
    model = _converted_ddp(nn.Sequential(nn.BatchNorm2d(2)))
    for shape in ((1 if rank else 0, 2, 11, 13), (0, 2, 11, 13)):
        for requires_grad in (True, False):
            _not_nan(model, torch.zeros(shape, requires_grad=requires_grad))
    dist.destroy_process_group()
    return True


@world_sizes(2, 3)
def test_empty_input_on_some_or_all_ranks(world_size):
    assert spawn(empty_inputs, world_size, timeout=TIMEOUT) == [True] * world_size


# -- a subgroup: torch's test_SyncBatchNorm_process_group, and ranks outside it -----------------
def _nested(process_group) -> nn.Module:
    """A converted model whose batch norm sits two levels down (torch's test uses resnet50)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Identity(), nn.Sequential(nn.BatchNorm2d(3))))
    return SyncBatchNorm.convert_sync_batchnorm(model, process_group)


def subgroup(ctx) -> str:
    """World 3, group [0, 1]: ranks 0 and 1 sync between them; rank 2 normalizes alone."""
    init(ctx)
    rank = ctx.rank
    pg = dist.new_group([0, 1])
    model = _nested(pg)
    layer = model[0][1][0]
    assert isinstance(layer, SyncBatchNorm) and layer.process_group is pg
    reference = nn.BatchNorm2d(3)  # the same initial state, unsynced
    sizes = [2, 3, 4]  # ranks 0, 1 together; rank 2 by itself
    x = torch.randn(sum(sizes), 3, 4, 5, generator=torch.Generator().manual_seed(3))
    if rank < 2:
        together, mine = x[:5], slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    else:
        together, mine = x[5:], slice(0, 4)
    out = model(together[mine])
    torch.testing.assert_close(out, reference(together)[mine], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.running_var, reference.running_var, rtol=1e-5, atol=1e-5)
    # the subgroup's ranks agree with each other; the world group still works afterwards
    if rank < 2:
        theirs = layer.running_mean.clone()
        dist.all_reduce(theirs, group=pg)
        torch.testing.assert_close(theirs, 2 * layer.running_mean)
    whole = SyncBatchNorm(3)
    whole(x[rank * 3 : rank * 3 + 3])
    assert_same_across_ranks([whole.running_mean, whole.running_var])
    dist.destroy_process_group()
    return "synced" if rank < 2 else "local"


def test_subgroup_syncs_only_its_ranks():
    assert spawn(subgroup, 3, timeout=TIMEOUT) == ["synced", "synced", "local"]


# -- bad input: torch's errors, on every rank, before any communication --------------------------
def _torch_error(make: Callable[[], nn.Module], x: torch.Tensor, kind: type[Exception]) -> str:
    """The message torch's own batch norm raises for ``x`` (in this process)."""
    return error_of(lambda: make()(x), kind)


def bad_inputs(ctx) -> list[str]:
    init(ctx)
    rank = ctx.rank
    layer = SyncBatchNorm(3)
    int_input = torch.ones(4, 3, 2, dtype=torch.long)
    cases = [  # (input, error type, torch's message or None to compute it)
        (torch.ones(3), ValueError, "expected at least 2D input (got 1D input)"),
        (
            torch.ones(4, 0, 2),
            ValueError,
            "SyncBatchNorm number of input channels should be non-zero",
        ),
        (
            int_input,
            NotImplementedError,
            _torch_error(lambda: nn.BatchNorm1d(3), int_input, NotImplementedError),
        ),
        (torch.ones(4, 5, 2), RuntimeError, "running_mean should contain 5 elements not 3"),
        (
            torch.ones(4, 3, 2, dtype=torch.float64),
            RuntimeError,
            "mixed dtype (CPU): all inputs must share same datatype.",
        ),
    ]
    for x, kind, message in cases:
        assert error_of(lambda x=x: layer(x), kind) == message
    # one value per channel in the whole world (rank 0 has the only sample): every rank raises
    one = torch.ones(1 if rank == 0 else 0, 3)
    assert error_of(lambda: layer(one), ValueError) == (
        "Expected more than 1 value per channel when training, got input size 1"
    )
    # a destroyed group is refused before communicating
    gone = dist.new_group(list(range(ctx.world_size)))
    dist.destroy_process_group(gone)
    assert "is not registered" in error_of(
        lambda: SyncBatchNorm(3, process_group=gone)(torch.ones(4, 3)), ValueError
    )
    # nothing was left half-done: a synced step still agrees across ranks
    layer(torch.randn(2 + rank, 3, 2))
    assert_same_across_ranks([layer.running_mean, layer.running_var])
    dist.destroy_process_group()
    return [kind.__name__ for _, kind, _ in cases]


@world_sizes(2, 3)
def test_bad_input_raises_torchs_errors_on_every_rank(world_size):
    names = ["ValueError", "ValueError", "NotImplementedError", "RuntimeError", "RuntimeError"]
    assert spawn(bad_inputs, world_size, timeout=TIMEOUT) == [names] * world_size


# -- one process ----------------------------------------------------------------------------
def test_is_a_torch_sync_batchnorm():
    layer = SyncBatchNorm(5, momentum=None, bias=False)
    torch_layer = nn.SyncBatchNorm(5, momentum=None, bias=False)
    assert isinstance(layer, nn.SyncBatchNorm) and repr(layer) == repr(torch_layer)
    assert layer.state_dict().keys() == torch_layer.state_dict().keys()
    assert layer.bias is None and dist.nn.SyncBatchNorm is SyncBatchNorm


def test_convert_keeps_parameters_buffers_and_flags():
    model = nn.Sequential(
        nn.Conv2d(2, 3, 1),
        nn.BatchNorm2d(3),
        nn.Sequential(
            nn.BatchNorm1d(4, affine=False), nn.BatchNorm3d(2, track_running_stats=False)
        ),
        nn.BatchNorm2d(3, bias=False, momentum=None, eps=1e-3),
    )
    model[1].weight.requires_grad_(False)
    model[1].qconfig = "a qconfig"
    model[2][0].eval()
    olds = [model[1], model[2][0], model[2][1], model[3]]
    tensors = [[*m.parameters(), *m.buffers()] for m in olds]
    converted = SyncBatchNorm.convert_sync_batchnorm(model, process_group="pg")
    assert converted is model and isinstance(model[0], nn.Conv2d)
    news = [model[1], model[2][0], model[2][1], model[3]]
    for old, new, kept in zip(olds, news, tensors, strict=True):
        assert type(new) is SyncBatchNorm and new.process_group == "pg"
        assert all(a is b for a, b in zip([*new.parameters(), *new.buffers()], kept, strict=True))
        for attr in (
            "num_features",
            "eps",
            "momentum",
            "affine",
            "track_running_stats",
            "training",
        ):
            assert getattr(new, attr) == getattr(old, attr), attr
    assert not model[1].weight.requires_grad and model[1].qconfig == "a qconfig"
    assert model[3].bias is None and model[2][1].running_mean is None
    bare = nn.BatchNorm1d(4)
    assert type(SyncBatchNorm.convert_sync_batchnorm(bare)) is SyncBatchNorm


@pytest.mark.parametrize("train", [True, False])
def test_without_a_process_group_it_is_plain_batch_norm(train):
    """pyc10d not initialized: local batch norm, like torch's (which would need a GPU)."""
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(3, momentum=None).train(train)
    layer = SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(reference))
    x = torch.randn(4, 3, 5, 5)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.testing.assert_close(layer(a), reference(b), rtol=0, atol=0)
    layer(a).sum().backward()
    reference(b).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    for p, q in zip(
        [*layer.parameters(), *layer.buffers()],
        [*reference.parameters(), *reference.buffers()],
        strict=True,
    ):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_input_checks_without_a_process_group():
    layer = SyncBatchNorm(3)
    assert (
        error_of(lambda: layer(torch.ones(3)), ValueError)
        == "expected at least 2D input (got 1D input)"
    )
    assert "should be non-zero" in error_of(lambda: layer(torch.ones(2, 0)), ValueError)
