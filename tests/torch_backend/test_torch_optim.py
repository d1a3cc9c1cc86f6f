"""torch's distributed optimizers and model averaging on ``"pyc10d"``: the same as on Gloo.

One rank function trains with ``ZeroRedundancyOptimizer`` (with a state-dict consolidation, and
under ``Join`` with uneven inputs), ``PeriodicModelAverager`` on plain local models, and
``PostLocalSGDOptimizer`` with DDP's ``post_localSGD_hook`` over subgroups made by
``new_subgroups_by_enumeration`` (pyc10d subgroups too); it runs once on Gloo and once on
pyc10d, each in its own processes, and the tests below share those two runs
(``_stack.run_both``). At world size 2 the parameters must be bit-identical (a reduction of two
values is one commutative addition; broadcasts copy). At world size 3 Gloo's ring and pyc10d's
rank order may add the three contributions in different orders, so the check allows float32
rounding (``rtol=1e-5, atol=1e-6``).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.post_localSGD_hook import (
    PostLocalSGDState,
    post_localSGD_hook,
)
from torch.distributed.algorithms.join import Join
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
from torch.nn.parallel import DistributedDataParallel as DDP

from pyc10d.testing import world_sizes
from pyc10d.torch_backend.group import ProcessGroupPyc10d

from tests.torch_backend._stack import assert_tensors, guarded, ok, run_both

with warnings.catch_warnings():  # torch.distributed.optim's import uses deprecated torch.jit
    warnings.simplefilter("ignore", DeprecationWarning)
    from torch.distributed.optim import PostLocalSGDOptimizer, ZeroRedundancyOptimizer

STEPS = 5
Params = list[torch.Tensor]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 2)
    )


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(6, 8, generator=g), torch.randn(6, 2, generator=g)


def _params(model: nn.Module) -> Params:
    return [p.detach().clone() for p in model.parameters()]


def _step(model: nn.Module, opt: torch.optim.Optimizer, rank: int, step: int) -> None:
    x, y = _batch(rank, step)
    opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def _zero(rank: int) -> tuple[Params, list[int]]:
    """ZeRO (Adam, bucket views) over DDP; rank 0 consolidates the full optimizer state."""
    model = DDP(_net())
    opt = ZeroRedundancyOptimizer(
        model.parameters(), torch.optim.Adam, lr=0.01, parameters_as_bucket_view=True
    )
    for step in range(STEPS):
        _step(model, opt, rank, step)
    opt.consolidate_state_dict(to=0)
    steps = []
    if rank == 0:  # every parameter's state, gathered from the rank that owns it
        state = opt.state_dict()["state"]
        steps = [int(state[i]["step"]) for i in sorted(state)]
    return _params(model), steps


def _zero_join(rank: int) -> Params:
    """ZeRO and DDP under ``Join``: rank r has ``2 + r`` batches."""
    model = DDP(_net())
    opt = ZeroRedundancyOptimizer(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9)
    with Join([model, opt]):
        for step in range(2 + rank):
            _step(model, opt, rank, step)
    return _params(model)


def _periodic_averager(rank: int) -> Params:
    """Local training, parameters averaged at steps 0, 2, 4 (every 2nd, no warm-up)."""
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    averager = PeriodicModelAverager(period=2, warmup_steps=0)
    for step in range(STEPS):
        _step(model, opt, rank, step)
        averager.average_parameters(model.parameters())
    assert averager.step == STEPS
    return _params(model)


def _post_local_sgd(rank: int, n: int) -> Params:
    """DDP with ``post_localSGD_hook``: global gradient averaging for 2 steps, then within
    subgroups {0} and {1, ..., n-1}; ``PostLocalSGDOptimizer`` averages models every 2 steps."""
    subgroup, _ = dist.new_subgroups_by_enumeration([[0], list(range(1, n))])
    model = DDP(_net())
    state = PostLocalSGDState(process_group=None, subgroup=subgroup, start_localSGD_iter=2)
    model.register_comm_hook(state, post_localSGD_hook)
    opt = PostLocalSGDOptimizer(
        optim=torch.optim.SGD(model.parameters(), lr=0.1),
        averager=PeriodicModelAverager(period=2, warmup_steps=2),
    )
    for step in range(STEPS + 1):
        _step(model, opt, rank, step)
    assert state.iter == state.start_localSGD_iter  # the hook went on to local allreduces
    return _params(model)


def optimizers(ctx, backend: str) -> dict[str, object]:
    """Train with each distributed optimizer / averager on ``backend``; return the parameters."""
    dist.init_process_group(
        backend, init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    assert isinstance(dist.group.WORLD, ProcessGroupPyc10d) == (backend == "pyc10d")
    rank = ctx.rank
    out = {
        "zero": guarded(_zero, rank),
        "zero_join": guarded(_zero_join, rank),
        "periodic_averager": guarded(_periodic_averager, rank),
        "post_local_sgd": guarded(_post_local_sgd, rank, ctx.world_size),
    }
    dist.destroy_process_group()
    return out


def _params_of(results: dict[str, object], key: str) -> Params:
    value = ok(results[key], key)
    return value[0] if key == "zero" else value


def _check_vs_gloo(world_size: int, key: str) -> None:
    """``key``'s parameters on pyc10d equal Gloo's (bit-identical at world size 2, within
    float32 rounding at 3: see the module docstring)."""
    gloo, ours = run_both(optimizers, world_size)
    for rank in range(world_size):
        mine, theirs = _params_of(ours[rank], key), _params_of(gloo[rank], key)
        what = f"rank {rank} {key} vs Gloo"
        if world_size == 2:
            assert_tensors(mine, theirs, what)
        else:
            assert_tensors(mine, theirs, what, exact=False, rtol=1e-5, atol=1e-6)


def _check_replicas(world_size: int, key: str) -> None:
    """``key``'s parameters are the same on every pyc10d rank."""
    _, ours = run_both(optimizers, world_size)
    for rank in range(world_size):
        what = f"rank {rank} {key} vs rank 0"
        assert_tensors(_params_of(ours[rank], key), _params_of(ours[0], key), what)


@world_sizes(2, 3)
def test_zero_redundancy_optimizer_matches_gloo(world_size):
    """ZeRO (Adam over DDP) gives Gloo's parameters; rank 0 consolidates all Adam state."""
    _check_vs_gloo(world_size, "zero")
    _check_replicas(world_size, "zero")
    _, ours = run_both(optimizers, world_size)
    assert ours[0]["zero"][1] == [STEPS] * 6  # all 6 parameters' Adam state, from their owners


@world_sizes(2, 3)
def test_zero_under_join_matches_gloo(world_size):
    """ZeRO and DDP under ``Join`` with uneven inputs give Gloo's parameters."""
    _check_vs_gloo(world_size, "zero_join")
    _check_replicas(world_size, "zero_join")


@world_sizes(2, 3)
def test_periodic_model_averager_matches_gloo(world_size):
    """``PeriodicModelAverager`` gives Gloo's parameters, the same on every rank."""
    _check_vs_gloo(world_size, "periodic_averager")
    _check_replicas(world_size, "periodic_averager")


@world_sizes(2, 3)
def test_post_local_sgd_optimizer_matches_gloo(world_size):
    """``PostLocalSGDOptimizer`` with ``post_localSGD_hook`` on subgroups gives Gloo's params."""
    _check_vs_gloo(world_size, "post_local_sgd")
    # the last step (5) is neither globally averaged nor allreduced beyond {0}, {1, ..., n-1}
    _, ours = run_both(optimizers, world_size)
    first = ok(ours[0]["post_local_sgd"], "post_local_sgd")
    for rank in range(1, world_size):
        local = ok(ours[rank]["post_local_sgd"], "post_local_sgd")
        assert_tensors(local, ours[1]["post_local_sgd"], f"rank {rank} vs rank 1")
        assert not torch.equal(local[0], first[0])
