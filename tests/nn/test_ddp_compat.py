"""DDP details that follow torch: errors recorded in ``_get_ddp_logging_data()`` (``has_error``,
``error``), ``Reducer.prepare_for_backward`` taking one tensor as well as a list, and sparse
gradients (``nn.Embedding(sparse=True)``) under ``gradient_as_bucket_view=True``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pyc10d as dist
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.nn.parallel import Reducer
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import error_of, init, sgd_step

TIMEOUT = 90
RETURN_ANNOTATION = (
    "Communication hook: return annotation should be torch.futures.Future[torch.Tensor]."
)
STATIC_TOO_LATE = (
    "set_static_graph() should be called before training loop starts and after "
    "DistributedDataParallel is constructed."
)


# -- errors in the logging data -----------------------------------------------------------------
def _logged(ddp: DDP) -> tuple[object, object]:
    data = ddp._get_ddp_logging_data()
    return data.get("has_error"), data.get("error")


def logged_errors(ctx) -> list[tuple[object, object]]:
    init(ctx)
    ddp = DDP(nn.Linear(3, 2))
    seen = [_logged(ddp)]

    def comm_hook(state: object, bucket: dist.GradBucket) -> int:  # torch's test hook
        return torch.futures.Future()

    # torch's test_ddp_invalid_comm_hook_return_type, then its test_ddp_python_error_logged
    assert error_of(lambda: ddp.register_comm_hook(None, comm_hook), ValueError) == (
        RETURN_ANNOTATION
    )
    seen.append(_logged(ddp))
    assert "must be callable" in error_of(lambda: ddp.register_comm_hook({}, {}), TypeError)
    seen.append(_logged(ddp))

    # a hook returning something else than a Future fails in backward (not logged, as in torch)
    def returns_int(state, bucket):
        return 1

    other = DDP(nn.Linear(3, 2))
    other.register_comm_hook(None, returns_int)
    message = error_of(lambda: other(torch.randn(2, 3)).sum().backward())
    assert "callback must return a torch.futures.Future object, but got" in message
    seen.append(_logged(other))

    # the Reducer's own checks are logged with their bare message (torch's REDUCER_CHECK)
    ddp(torch.randn(2, 3)).sum().backward()
    assert error_of(ddp._set_static_graph) == STATIC_TOO_LATE
    seen.append(_logged(ddp))
    dist.destroy_process_group()
    return seen


@world_sizes(2, 3)
def test_errors_are_recorded_in_logging_data(world_size):
    for seen in spawn(logged_errors, world_size, timeout=TIMEOUT):
        assert seen == [
            (None, None),
            (1, f"<class 'ValueError'>: {RETURN_ANNOTATION}"),
            (1, "<class 'TypeError'>: Communication hook must be callable."),
            (None, None),
            (1, STATIC_TOO_LATE),
        ]


# -- prepare_for_backward with one tensor ----------------------------------------------------
class ThreeLayers(nn.Module):
    """torch's ReducerModule: fc3 can be left out of the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 10, bias=False)
        self.fc2 = nn.Linear(10, 4, bias=False)
        self.fc3 = nn.Linear(4, 4, bias=False)

    def forward(self, x: torch.Tensor, use_fc3: bool = True) -> torch.Tensor:
        x = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.fc3(x) if use_fc3 else x


def single_output(ctx) -> None:
    init(ctx)
    rank, world = ctx.rank, ctx.world_size
    torch.manual_seed(0)  # the same model on every rank
    model = ThreeLayers()
    reference = copy.deepcopy(model)
    params = list(model.parameters())
    reducer = Reducer(
        params, [list(range(len(params)))], [1 << 20], dist.group.WORLD, find_unused_parameters=True
    )
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4 * world, 2, generator=g)
    reducer.prepare_for_forward()
    loss = model(x[4 * rank : 4 * rank + 4], use_fc3=False).pow(2).mean()
    reducer.prepare_for_backward(loss)  # a tensor, not a list (torch accepts both)
    loss.backward()
    # fc3 is unreachable from the loss: globally unused, its grad stays None (torch's test)
    assert model.fc3.weight.grad is None
    reference(x, use_fc3=False).pow(2).mean().backward()
    for name in ("fc1", "fc2"):
        got, want = getattr(model, name).weight.grad, getattr(reference, name).weight.grad
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    dist.destroy_process_group()


@world_sizes(2, 3)
def test_prepare_for_backward_accepts_a_single_tensor(world_size):
    spawn(single_output, world_size, timeout=TIMEOUT)


# -- sparse gradients with gradient_as_bucket_view ---------------------------------------------
class Bag(nn.Module):
    """A sparse embedding summed over tokens, a dense layer on top."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(12, 4, sparse=True)
        self.head = nn.Linear(4, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(tokens).sum(1))


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.to_dense() for n, p in model.named_parameters() if p.grad is not None}


def sparse_bucket_view(ctx, accumulate: bool) -> None:
    init(ctx)
    rank, world, rows = ctx.rank, ctx.world_size, 3
    torch.manual_seed(rank)  # DDP broadcasts rank 0's parameters
    model = Bag()
    ddp = DDP(model, gradient_as_bucket_view=True)
    reference = copy.deepcopy(model)
    mine = slice(rank * rows, (rank + 1) * rows)
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        tokens = torch.randint(0, 12, (world * rows, 5), generator=g)
        target = torch.randn(world * rows, 2, generator=g)
        for m, part in ((ddp, mine), (reference, slice(None))):
            if not accumulate:
                m.zero_grad()
            nn.functional.mse_loss(m(tokens[part]), target[part]).backward()
        assert model.embedding.weight.grad.is_sparse
        for name, want in _grads(reference).items():
            got = _grads(model)[name]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"{step} {name}")
        for m in (model, reference):
            sgd_step(m)
    # the dense gradients are views of the bucket: the Reducer wrote into them in place
    head = model.head.weight.grad
    assert head.untyped_storage().data_ptr() == model.head.bias.grad.untyped_storage().data_ptr()
    dist.destroy_process_group()


@pytest.mark.parametrize("accumulate", [False, True], ids=["zero_grad", "accumulate"])
@world_sizes(2, 3)
def test_sparse_gradients_with_gradient_as_bucket_view(world_size, accumulate):
    spawn(sparse_bucket_view, world_size, args=(accumulate,), timeout=TIMEOUT)
