"""``init_process_group("pyc10d")`` with every init method torch accepts, and the group it makes.

Also: registration without importing pyc10d (torch's ``torch.backends`` entry point), backend
strings ``"cpu:pyc10d"`` and ``new_group(backend="pyc10d")`` under a Gloo default group, the
torch-side store used for the rendezvous (no second one), and bad options refused clearly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

import pyc10d
from pyc10d.store.torch_store import TorchStore
from pyc10d.testing import spawn, world_sizes
from pyc10d.torch_backend import BACKEND_NAME, is_registered
from pyc10d.torch_backend.group import ProcessGroupPyc10d

TIMEOUT = 90


def _check_world(ctx) -> float:
    """One allreduce on the default group, which must be pyc10d's; returns the result."""
    assert dist.get_backend() == BACKEND_NAME
    assert isinstance(dist.group.WORLD, ProcessGroupPyc10d)
    assert dist.get_rank() == ctx.rank and dist.get_world_size() == ctx.world_size
    t = torch.tensor([ctx.rank + 1.0])
    dist.all_reduce(t)
    dist.destroy_process_group()
    return t.item()


def init_with(ctx, method: str) -> float:
    """Initialise with ``method`` (env, tcp, file, store) and run one allreduce."""
    kwargs: dict = {"rank": ctx.rank, "world_size": ctx.world_size}
    if method == "env":
        os.environ.update(ctx.env)
        kwargs = {}  # everything from RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
    elif method == "tcp":
        kwargs["init_method"] = f"tcp://127.0.0.1:{ctx.env['MASTER_PORT']}"
    elif method == "file":
        kwargs["init_method"] = ctx.init_method
    else:
        kwargs["store"] = dist.FileStore(ctx.path("store"), ctx.world_size)
    dist.init_process_group(BACKEND_NAME, **kwargs)
    return _check_world(ctx)


@world_sizes(2, 3)
@pytest.mark.parametrize("method", ["env", "tcp", "file", "store"])
def test_init_methods(world_size, method):
    """Each init method gives a working pyc10d default group."""
    results = spawn(init_with, world_size, args=(method,), timeout=TIMEOUT)
    assert results == [world_size * (world_size + 1) / 2] * world_size


def groups_under_gloo(ctx) -> list[float]:
    """A Gloo default group; pyc10d subgroups via new_group and "cpu:pyc10d" strings."""
    dist.init_process_group(
        "gloo", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    n = ctx.world_size
    whole = dist.new_group(backend=BACKEND_NAME)
    tail = dist.new_group(list(range(1, n)), backend="cpu:pyc10d")
    assert isinstance(whole, ProcessGroupPyc10d)
    assert dist.get_backend(whole) == BACKEND_NAME
    assert whole.group_name and whole.group_name != dist.group.WORLD.group_name
    # the rendezvous went through torch's store: pyc10d wraps it rather than opening its own
    assert isinstance(whole.pg._store.underlying_store, TorchStore)
    out = []
    t = torch.tensor([ctx.rank + 1.0])
    dist.all_reduce(t, group=whole)
    out.append(t.item())
    t = torch.tensor([ctx.rank + 1.0])
    if ctx.rank != 0:
        assert isinstance(tail, ProcessGroupPyc10d)
        dist.all_reduce(t, group=tail)
        assert dist.get_process_group_ranks(tail) == list(range(1, n))
    out.append(t.item())
    t = torch.tensor([ctx.rank + 1.0])
    dist.all_reduce(t)  # the Gloo default group still works beside them
    out.append(t.item())
    dist.destroy_process_group()
    return out


@world_sizes(2, 3)
def test_new_group_and_device_strings(world_size):
    """new_group(backend="pyc10d") and "cpu:pyc10d" subgroups under a Gloo default group."""
    results = spawn(groups_under_gloo, world_size, timeout=TIMEOUT)
    total = world_size * (world_size + 1) / 2
    assert results[0] == [total, 1.0, total]
    for rank in range(1, world_size):
        assert results[rank] == [total, total - 1, total]


def bad_options(ctx) -> str:
    """pg_options of the wrong type: a TypeError naming what was expected."""
    with pytest.raises(TypeError, match=r"pg_options for the pyc10d backend must be a pyc10d"):
        dist.init_process_group(
            BACKEND_NAME,
            init_method=ctx.init_method,
            rank=ctx.rank,
            world_size=ctx.world_size,
            pg_options=object(),
        )
    return "refused"


def test_bad_pg_options_refused():
    """A foreign pg_options object is refused on every rank before any connecting."""
    assert spawn(bad_options, 2, timeout=TIMEOUT) == ["refused"] * 2


def options_applied(ctx) -> list:
    """A pyc10d Options object as pg_options: its thread count reaches the group."""
    options = pyc10d.ProcessGroup.Options(threads=3)
    dist.init_process_group(
        BACKEND_NAME,
        init_method=ctx.init_method,
        rank=ctx.rank,
        world_size=ctx.world_size,
        pg_options=options,
        timeout=timedelta(seconds=42),
    )
    inner = dist.group.WORLD.pg
    seen = [inner.options.threads, inner.options.timeout.total_seconds()]
    dist.destroy_process_group()
    return seen


def test_pg_options_and_timeout_reach_pyc10d():
    """pg_options and init_process_group's timeout configure pyc10d's group."""
    assert spawn(options_applied, 2, timeout=TIMEOUT) == [[3, 42.0]] * 2


def test_registered_on_import():
    """Importing pyc10d registers the backend for CPU tensors."""
    assert is_registered()
    assert dist.Backend(BACKEND_NAME) == BACKEND_NAME
    assert dist.Backend.default_device_backend_map.get("cpu") in ("gloo", BACKEND_NAME)
    assert "c" not in dist.Backend.default_device_backend_map  # devices given as a list


def test_registered_by_torch_alone():
    """torch's entry-point autoload makes "pyc10d" a backend without importing pyc10d (which
    is loaded only when a group is made)."""
    code = (
        "import sys, torch, torch.distributed as d; "
        "print('pyc10d' in sys.modules, 'PYC10D' in d.Backend._plugins)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TORCH_DEVICE_BACKEND_AUTOLOAD"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    assert done.stdout.split() == ["False", "True"]
    env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"  # torch's own switch turns it off
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )
    assert done.stdout.split()[1] == "False"
