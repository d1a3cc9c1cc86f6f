"""DDP communication hooks (``register_comm_hook``: results, validation, errors), state dicts and
checkpoints taken mid-training, and ``_get_ddp_logging_data()``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import pyc10d as dist
from pyc10d.nn.parallel import DistributedDataParallel as DDP
from pyc10d.nn.parallel import GradBucket
from pyc10d.testing import spawn, world_sizes

from tests.helpers.ddp import assert_same_across_ranks, batch, error_of, init, sgd_step

TIMEOUT = 90


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))


def _step(ddp: nn.Module, seed: int, rank: int) -> None:
    ddp.zero_grad()
    x, y = batch(seed * 7 + rank, 3, 4, 2)
    nn.functional.mse_loss(ddp(x), y).backward()


# -- hooks --------------------------------------------------------------------------------------
def average_hook(state: object, bucket: GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Allreduce, then divide: the default reduction as a hook (value: the tensor)."""
    state["calls"].append((bucket.index(), bucket.is_last(), len(bucket.parameters())))
    for grad, param in zip(bucket.gradients(), bucket.parameters(), strict=True):
        assert grad.shape == param.shape
    world = dist.get_world_size()
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0] / world)


def list_hook(state: object, bucket):
    """The same, leaving the allreduce's one-element list as the future's value."""
    bucket.buffer().div_(dist.get_world_size())
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future()


def bad_return_hook(state, bucket):
    """Returns a tensor, not a future."""
    return bucket.buffer()


def bad_annotation_hook(state, bucket: int):
    """Annotates bucket with the wrong type."""


def comm_hooks(ctx) -> dict[str, str]:
    init(ctx)
    rank = ctx.rank
    out = {}
    plain = DDP(_net(), bucket_cap_mb=0.00005)
    state: dict = {"calls": []}
    hooked = DDP(_net(), bucket_cap_mb=0.00005)
    hooked.register_comm_hook(state, average_hook)
    listed = DDP(_net(), gradient_as_bucket_view=True)
    listed.register_comm_hook(None, list_hook)
    for step in range(3):
        for model in (plain, hooked, listed):
            _step(model, step, rank)
        for p, q, r in zip(
            plain.parameters(), hooked.parameters(), listed.parameters(), strict=True
        ):
            torch.testing.assert_close(q.grad, p.grad)
            torch.testing.assert_close(r.grad, p.grad)
        for model in (plain, hooked, listed):
            sgd_step(model)
    assert hooked.reducer.bucket_count() > 1
    last = state["calls"][-hooked.reducer.bucket_count() :]
    assert [c[0] for c in last] == list(range(len(last)))
    assert [c[1] for c in last] == [False] * (len(last) - 1) + [True]
    assert sum(c[2] for c in last) == 4

    out["twice"] = error_of(lambda: hooked.register_comm_hook(None, average_hook))
    out["not_callable"] = error_of(lambda: plain.register_comm_hook(None, {}), TypeError)
    out["annotation"] = error_of(
        lambda: plain.register_comm_hook(None, bad_annotation_hook), ValueError
    )
    out["arity"] = error_of(lambda: plain.register_comm_hook(None, lambda b: b), TypeError)
    bad = DDP(_net())
    bad.register_comm_hook(None, bad_return_hook)
    out["bad_return"] = error_of(lambda: _step(bad, 0, rank))
    out["comm_hook_name"] = hooked._get_ddp_logging_data()["comm_hook"]
    dist.destroy_process_group()
    return out


@world_sizes(2, 3)
def test_comm_hooks(world_size):
    for out in spawn(comm_hooks, world_size, timeout=TIMEOUT):
        assert out["twice"] == (
            "register_comm_hook or register_builtin_comm_hook can only be called once."
        )
        assert "must be callable" in out["not_callable"]
        assert "bucket annotation should be dist.GradBucket" in out["annotation"]
        assert "(state, bucket)" in out["arity"]
        assert (
            "must return a torch.futures.Future object, but got torch.Tensor" in (out["bad_return"])
        )
        assert out["comm_hook_name"] == "average_hook"


# -- state dicts, checkpoints, logging ----------------------------------------------------------
def checkpoints(ctx) -> dict:
    init(ctx)
    rank = ctx.rank
    ddp = DDP(_net())
    keys = list(ddp.state_dict())
    assert keys and all(k.startswith("module.") for k in keys)
    assert list(ddp.module.state_dict()) == [k[len("module.") :] for k in keys]
    for step in range(2):
        _step(ddp, step, rank)
        sgd_step(ddp)
    path = f"{ctx.tmpdir}/ckpt.pt"
    if rank == 0:
        torch.save(ddp.state_dict(), path)
    dist.barrier()
    # a fresh model loads the checkpoint, then trains on exactly like the original
    resumed = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    resumed_ddp = DDP(resumed)
    resumed_ddp.load_state_dict(torch.load(path, map_location="cpu"))
    twin_ddp = copy.deepcopy(ddp)  # pickles without its group and Reducer, rebuilds them
    assert twin_ddp.reducer is not ddp.reducer
    for step in range(2, 4):
        for model in (ddp, resumed_ddp, twin_ddp):
            _step(model, step, rank)
            sgd_step(model)
    for p, q, r in zip(
        ddp.parameters(), resumed_ddp.parameters(), twin_ddp.parameters(), strict=True
    ):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
        torch.testing.assert_close(r, p, rtol=0, atol=0)
    assert_same_across_ranks(list(ddp.parameters()))
    data = ddp._get_ddp_logging_data()
    sub = dist.new_group(list(range(ctx.world_size)))
    on_sub = DDP(_net(), process_group=sub)
    assert "only supported when using DDP with the default process group" in error_of(
        lambda: copy.deepcopy(on_sub)
    )
    dist.destroy_process_group()
    return data


def test_checkpoints_and_logging_data():
    sizes = (4 * 6 + 6 + 6 * 2 + 2) * 4
    for rank, data in enumerate(spawn(checkpoints, 2, timeout=TIMEOUT)):
        assert data["world_size"] == 2 and data["rank"] == rank
        assert data["module_name"] == "Sequential"
        assert data["device_ids"] == "" and data["output_device"] == -1
        assert data["broadcast_buffers"] == 1
        assert data["has_sync_bn"] == 0
        assert data["bucket_cap_bytes"] == 25 * 1024 * 1024
        assert data["find_unused_parameters"] == 0 and data["gradient_as_bucket_view"] == 0
        assert data["backend_name"] == "gloo"
        assert data["iteration"] == 4
        assert data["dtypes"] == "float"
        assert data["total_parameter_size_bytes"] == sizes
        assert data["num_parameter_tensors"] == 4
        assert data["bucket_sizes"] == str(sizes)
        assert data["has_rebuilt_buckets"] == 1
        assert data["rebuilt_bucket_sizes"] == str(sizes)
        assert data["prev_iteration_grad_ready_order_indices"] == "3, 2, 1, 0"
        assert data["rebuilt_per_bucket_param_indices"] == "3 2 1 0"
        assert data["avg_backward_compute_time"] > 0


# -- the stock hooks of pyc10d.algorithms.ddp_comm_hooks ----------------------------------------
def stock_hooks(ctx) -> list[str]:
    from pyc10d.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    init(ctx)
    rank = ctx.rank
    plain = DDP(_net(), bucket_cap_mb=0.00005)
    hooked = {
        "allreduce": (default_hooks.allreduce_hook, None, 1e-6),
        "fp16": (default_hooks.fp16_compress_hook, None, 1e-2),
        "powerSGD": (
            powerSGD_hook.powerSGD_hook,
            powerSGD_hook.PowerSGDState(None, matrix_approximation_rank=1, start_powerSGD_iter=2),
            None,
        ),
    }
    models = {}
    for name, (hook, state, _) in hooked.items():
        models[name] = DDP(_net(), bucket_cap_mb=0.00005)
        models[name].register_comm_hook(state, hook)
    for step in range(3):
        _step(plain, step, rank)
        for name, model in models.items():
            _step(model, step, rank)
            tolerance = hooked[name][2]
            grads = [p.grad for p in model.parameters()]
            assert_same_across_ranks(grads)
            if tolerance is not None:
                for p, g in zip(plain.parameters(), grads, strict=True):
                    torch.testing.assert_close(g, p.grad, rtol=tolerance, atol=tolerance)
            sgd_step(model)
        sgd_step(plain)
    dist.destroy_process_group()
    return [model._get_ddp_logging_data()["comm_hook"] for model in models.values()]


def test_stock_comm_hooks():
    for names in spawn(stock_hooks, 2, timeout=TIMEOUT):
        assert names == ["allreduce_hook", "fp16_compress_hook", "powerSGD_hook"]
