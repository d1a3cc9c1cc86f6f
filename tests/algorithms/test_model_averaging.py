"""Model averaging: ``utils``, ``PeriodicModelAverager`` and ``HierarchicalModelAverager``.

The rank functions follow torch's own tests (``test_average_parameters``,
``test_periodic_model_averager[_param_group]``, the 1- and 3-level hierarchical ones of
``distributed_test.py``) and also run torch's averagers on a torch Gloo group in the same
process, from the same parameters, comparing the results.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

import pyc10d as dist
from pyc10d.algorithms.model_averaging import averagers, utils
from pyc10d.algorithms.model_averaging.hierarchical_model_averager import (
    HierarchicalModelAverager,
)
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import error_of, finish_both, init_both

TIMEOUT = 90
TOL = dict(atol=1e-5, rtol=1e-5)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_same(ours: nn.Module, theirs: nn.Module) -> None:
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **TOL)


# -- utils ---------------------------------------------------------------------------------------
def _average_parameters(ctx) -> None:
    """torch's test_average_parameters, then utils against torch's on random, mixed dtypes."""
    from torch.distributed.algorithms.model_averaging import utils as torch_utils

    tdist = init_both(ctx)
    rank, n = ctx.rank, ctx.world_size
    model = nn.Sequential(nn.Conv2d(3, 3, kernel_size=3, padding=1), nn.ReLU(), nn.Linear(1, 5))
    for p in model.parameters():
        p.data = torch.ones_like(p.data)
    utils.average_parameters(params=model.parameters(), process_group=None)
    for p in model.parameters():
        assert torch.equal(p.data, torch.ones_like(p.data))

    # partial averaging: ranks 0 and 1 average (to 0.5); a rank outside keeps its values
    for p in model.parameters():
        p.data = torch.ones_like(p.data) * rank
    pair = dist.new_group(ranks=[0, 1])
    utils.average_parameters(params=model.parameters(), process_group=pair)
    expected = 0.5 if rank < 2 else float(rank)
    for p in model.parameters():
        assert torch.equal(p.data, torch.full_like(p.data, expected))

    # random values of several dtypes: the same as torch's, each parameter keeping its dtype
    gen = torch.Generator().manual_seed(rank)
    ours = nn.ParameterList(
        [
            nn.Parameter(torch.randn(4, 3, generator=gen)),
            nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64)),
            nn.Parameter(torch.randn(2, 2, generator=gen).to(torch.bfloat16)),
        ]
    )
    theirs = copy.deepcopy(ours)
    utils.average_parameters(iter(ours), dist.group.WORLD)
    torch_utils.average_parameters(iter(theirs), tdist.group.WORLD)
    _assert_same(ours, theirs)
    mean = torch.stack(
        [torch.randn(4, 3, generator=torch.Generator().manual_seed(r)) for r in range(n)]
    ).mean(0)
    torch.testing.assert_close(ours[0].data, mean, **TOL)

    # only the parameters with a gradient, from a model or from param_groups
    layer = nn.Linear(3, 2)
    layer.weight.grad = torch.zeros_like(layer.weight)
    assert utils.get_params_to_average(layer.parameters()) == [layer.weight]
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    assert utils.get_params_to_average(opt.param_groups) == [layer.weight]
    assert utils.get_params_to_average(opt.param_groups) == torch_utils.get_params_to_average(
        opt.param_groups
    )
    before = layer.bias.detach().clone()
    layer.weight.data.fill_(rank)
    utils.average_parameters_or_parameter_groups(opt.param_groups, None)
    assert torch.equal(layer.weight.data, torch.full_like(layer.weight, (n - 1) / 2))
    assert torch.equal(layer.bias.data, before)  # no gradient: not averaged
    message = error_of(lambda: utils.get_params_to_average([torch.ones(1)]), NotImplementedError)
    assert message == "Parameter input of type <class 'torch.Tensor'> is not supported"
    finish_both(tdist)


@world_sizes(2, 3)
def test_average_parameters(world_size):
    spawn(_average_parameters, world_size, timeout=TIMEOUT)


# -- PeriodicModelAverager ---------------------------------------------------------------------
def _expect_periodic(averager, period, warmup, param, tensor, expected_avg, counted_from=None):
    """Reset ``param`` to ``tensor`` at each of 20 steps; averaged exactly every ``period`` steps
    after ``warmup``, the periods counted from step ``counted_from`` (default: ``warmup``)."""
    start = warmup if counted_from is None else counted_from
    steps = 20
    for step in range(steps):
        param.data = copy.deepcopy(tensor)
        param.grad = torch.ones_like(param.data)
        averager.average_parameters([param])
        due = step >= warmup and (step - start) % period == 0
        assert torch.equal(param.data, expected_avg if due else tensor), step
    assert averager.step == steps


def _periodic(ctx) -> None:
    """torch's periodic averager tests (model and param_groups), and torch's on a training loop."""
    from torch.distributed.algorithms.model_averaging import averagers as torch_averagers

    tdist = init_both(ctx)
    rank, n = ctx.rank, ctx.world_size
    model = nn.Linear(1, 5, bias=False)
    param = next(model.parameters())
    tensor = torch.ones_like(param.data) * rank
    expected_avg = torch.ones_like(param.data) * sum(range(n)) / n
    for warmup_steps in (12, 13, 14, 15):
        averager = averagers.PeriodicModelAverager(period=4, warmup_steps=warmup_steps)
        _expect_periodic(averager, 4, warmup_steps, param, tensor, expected_avg)

    # param_groups input (test_periodic_model_averager_param_group)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for warmup_steps in (12, 13, 14, 15):
        averager = averagers.PeriodicModelAverager(period=4, warmup_steps=warmup_steps)
        for step in range(20):
            param.grad = torch.ones_like(param.data) * rank
            param.data = torch.ones_like(param.data) * rank
            averager.average_parameters(opt.param_groups)
            due = step >= warmup_steps and (step - warmup_steps) % 4 == 0
            assert torch.equal(param.data, expected_avg if due else tensor)

    # a 1-level hierarchy is the periodic averager, but for counting its periods from step 0,
    # not from the end of the warm-up (torch's test meant to check it, but runs the periodic one)
    for warmup_steps in (12, 13, 14, 15):
        averager = HierarchicalModelAverager(OrderedDict([(4, n)]), warmup_steps=warmup_steps)
        assert averager.period_process_group_dict[4] is dist.group.WORLD
        _expect_periodic(averager, 4, warmup_steps, param, tensor, expected_avg, counted_from=0)

    # a rank outside the group: nothing averaged, steps still counted, no hang
    pair = dist.new_group(ranks=[0, 1])
    averager = averagers.PeriodicModelAverager(period=2, process_group=pair)
    pair_avg = torch.full_like(param.data, 0.5)
    for step in range(4):
        param.data = copy.deepcopy(tensor)
        averager.average_parameters(model.parameters())
        averaged = rank < 2 and step % 2 == 0
        assert torch.equal(param.data, pair_avg if averaged else tensor)
    assert averager.step == 4

    # local SGD on different data per rank: the same parameters as torch's averager gives
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    theirs = copy.deepcopy(ours)
    ours_opt = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    theirs_opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    ours_avg = averagers.PeriodicModelAverager(period=3, warmup_steps=2)
    theirs_avg = torch_averagers.PeriodicModelAverager(period=3, warmup_steps=2)
    gen = torch.Generator().manual_seed(100 + rank)
    for step in range(12):
        x, y = torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen)
        for net, opt in ((ours, ours_opt), (theirs, theirs_opt)):
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        # the model's parameters at even steps, the optimizer's param_groups at odd ones
        ours_avg.average_parameters(ours.parameters() if step % 2 else ours_opt.param_groups)
        theirs_avg.average_parameters(theirs.parameters() if step % 2 else theirs_opt.param_groups)
        _assert_same(ours, theirs)
    assert ours_avg.step == theirs_avg.step == 12
    # the last averaging (step 11) left every rank with the same parameters
    gathered = [torch.empty_like(ours[0].weight) for _ in range(n)]
    dist.all_gather(gathered, ours[0].weight.detach().contiguous())
    assert all(torch.equal(g, gathered[0]) for g in gathered)
    finish_both(tdist)


@world_sizes(2, 3)
def test_periodic_model_averager(world_size):
    spawn(_periodic, world_size, timeout=TIMEOUT)


# -- HierarchicalModelAverager -----------------------------------------------------------------
def _hierarchy_errors(ctx) -> dict[str, str]:
    """Each invalid hierarchy: our message and torch's (its averager on its Gloo group)."""
    from torch.distributed.algorithms.model_averaging import (
        hierarchical_model_averager as torch_hierarchical,
    )

    tdist = init_both(ctx)
    n = ctx.world_size
    cases = {
        "empty": (OrderedDict(), 0),
        "period": (OrderedDict([(0, 1), (2, n)]), 0),
        "last": (OrderedDict([(2, 1), (4, n - 1)]), 0),
        "zero_size": (OrderedDict([(2, 0), (4, n)]), 0),
        "exceeds": (OrderedDict([(2, n + 1), (4, n)]), 0),
        "warmup": (OrderedDict([(2, n)]), -1),
    }
    if n % 2:  # a size below n that does not divide it
        cases["divides"] = (OrderedDict([(2, 2), (4, n)]), 0)
    out = {}
    for name, (sizes, warmup) in cases.items():
        ours = error_of(lambda: HierarchicalModelAverager(sizes, warmup), ValueError)  # noqa: B023
        theirs = error_of(
            lambda: torch_hierarchical.HierarchicalModelAverager(sizes, warmup),  # noqa: B023
            ValueError,
        )
        assert ours == theirs, (name, ours, theirs)
        out[name] = ours

    # every period 1: torch's warning (and nothing else)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        HierarchicalModelAverager(OrderedDict([(1, n)]))
    [warning] = [w for w in caught if "maximum period" in str(w.message)]
    assert warning.filename == __file__  # pointing at the caller, as torch's stacklevel

    # a process group this rank is not in: torch's ValueError (its size is -1), nothing hangs
    pair = dist.new_group(ranks=[0, 1])
    if ctx.rank >= 2:
        message = error_of(
            lambda: HierarchicalModelAverager({2: 2}, process_group=pair), ValueError
        )
        assert message.endswith("must be equal to the size of arg ``process_group`` -1.")
    else:
        averager = HierarchicalModelAverager({2: 2}, process_group=pair)
        assert averager.period_process_group_dict[2] is pair
    finish_both(tdist)
    return out


@world_sizes(2, 3)
def test_hierarchy_validation(world_size):
    out = spawn(_hierarchy_errors, world_size, timeout=TIMEOUT)[0]
    n = world_size
    assert out["empty"] == "Arg ``period_group_size_dict`` must not be empty."
    assert out["period"] == (
        "The minimum period in arg ``period_group_size_dict`` must be a positive value."
    )
    assert out["last"] == (
        f"The last value in arg ``period_group_size_dict`` {n - 1} "
        f"must be equal to the size of arg ``process_group`` {n}."
    )
    assert out["zero_size"] == "The arg 'group_size' (0) must be positive"
    assert out["exceeds"] == f"The arg 'group_size' ({n + 1}) must not exceed the world size ({n})"
    if n % 2:
        assert out["divides"] == f"The world size ({n}) must be divisible by 'group_size=2'"
    assert out["warmup"] == "Arg ``warmup_steps`` must be a non-negative number."


def _three_levels(ctx) -> None:
    """torch's test_3_level_hierarchical_model_averager, then torch's averager beside ours."""
    from torch.distributed.algorithms.model_averaging import (
        hierarchical_model_averager as torch_hierarchical,
    )

    tdist = init_both(ctx)
    rank, n = ctx.rank, ctx.world_size
    param = nn.Parameter(torch.empty(5, 1))
    tensor = torch.ones(5, 1) * rank
    sizes = OrderedDict([(2, 2), (4, 4), (8, n)])  # n == 4: the 4-level is the whole world
    averager = HierarchicalModelAverager(sizes, warmup_steps=10)
    first = averager.period_process_group_dict[2]
    assert dist.get_process_group_ranks(first) == [rank // 2 * 2, rank // 2 * 2 + 1]
    assert averager.period_process_group_dict[4] is dist.group.WORLD
    pair_avg = torch.ones(5, 1) * (rank // 2 * 2 + 0.5)
    global_avg = torch.ones(5, 1) * sum(range(n)) / n
    for step in range(25):
        param.data = copy.deepcopy(tensor)
        param.grad = torch.ones_like(param.data)
        averager.average_parameters([param])
        if step in (16, 24, 12, 20):  # divisible by 8, or by 4 (the whole world as well)
            expected = global_avg
        elif step in (10, 14, 18, 22):
            expected = pair_avg
        else:
            expected = tensor
        assert torch.equal(param.data, expected), step

    # pairs every 2 steps, everyone every 3 (both at step 6): against torch's averager
    torch.manual_seed(0)
    ours = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2))
    theirs = copy.deepcopy(ours)
    ours_avg = HierarchicalModelAverager(OrderedDict([(2, 2), (3, n)]), warmup_steps=1)
    theirs_avg = torch_hierarchical.HierarchicalModelAverager(
        OrderedDict([(2, 2), (3, n)]), warmup_steps=1
    )
    gen = torch.Generator().manual_seed(7 + rank)
    for _ in range(9):
        x, y = torch.randn(4, 3, generator=gen), torch.randn(4, 2, generator=gen)
        for net in (ours, theirs):
            net.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(p.grad, alpha=-0.2)
        ours_avg.average_parameters(ours.parameters())
        theirs_avg.average_parameters(theirs.parameters())
        _assert_same(ours, theirs)
    finish_both(tdist)


def test_three_level_hierarchical_model_averager():
    spawn(_three_levels, 4, timeout=180)


# -- in this process -----------------------------------------------------------------------------
def test_periodic_argument_errors_are_torchs():
    from torch.distributed.algorithms.model_averaging import averagers as torch_averagers

    pg = object()  # any group: the arguments are checked before it is used
    for kwargs in ({"period": 0}, {"period": -3}, {"period": 4, "warmup_steps": -1}):
        with pytest.raises(ValueError) as ours:
            averagers.PeriodicModelAverager(process_group=pg, **kwargs)
        with pytest.raises(ValueError) as theirs:
            torch_averagers.PeriodicModelAverager(process_group=pg, **kwargs)
        assert str(ours.value) == str(theirs.value)
    assert str(ours.value) == "Arg ``warmup_steps`` must be a non-negative number."
    with pytest.warns(UserWarning, match="When period is 1, no need to use model averaging"):
        averager = averagers.PeriodicModelAverager(period=1, process_group=pg)
    assert (averager.period, averager.warmup_steps, averager.step) == (1, 0, 0)
    with pytest.raises(ValueError, match="Default process group has not been initialized"):
        averagers.PeriodicModelAverager(period=2)
    with pytest.raises(TypeError):
        averagers.ModelAverager()  # abstract
