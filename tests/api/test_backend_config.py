"""Backend config strings ("cpu:pyc10d,cuda:nccl") as torch reads them: ``BackendConfig``,
``is_*_available``, ``get_backend``/``get_backend_config`` of such groups, and torch's errors.

The first part ports torch's ``test_c10d_common.py`` (``PythonProcessGroupExtensionTest``:
``test_get_backend_name``, ``test_backend_class_attr``, ``test_is_backend_available``,
``test_backend_config``, ``test_init_process_group_with_multiple_backends``, ``test_shutdown``,
``test_abort``) with ``import pyc10d as dist``; the second compares pyc10d with the installed
torch, string by string.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings

import pytest
import torch
import torch.distributed as tdist

import pyc10d as dist
import pyc10d.distributed_c10d as c10d
from pyc10d.testing import spawn, world_sizes

TIMEOUT = 90
device_type = acc.type if (acc := torch.accelerator.current_accelerator()) else "cpu"


# -- torch's DummyWork / DummyProcessGroup (test_c10d_common.py) ----------------------------
class DummyWork(dist._Work):
    def wait(self, timeout=5.0):
        if torch.accelerator.is_available():
            torch.accelerator.current_stream().synchronize()
        return True


class DummyProcessGroup(dist.ProcessGroup):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._bound_device_id = None
        self.global_rank = args[0]
        self.group_size = args[1]
        self._aborted = False
        self._shutdown = False
        self.collectives_called = set()

    def rank(self):
        return self.global_rank

    def size(self):
        return self.group_size

    def getBackendName(self):
        return "Dummy"

    def allgather(self, output_tensor_lists, input_tensor_list, opts=None):
        self.collectives_called.add("allgather")
        for output_tensor_list, input_tensor in zip(output_tensor_lists, input_tensor_list):  # noqa: B905
            for output_tensor in output_tensor_list:
                output_tensor.copy_(input_tensor)
        return DummyWork()

    def barrier(self, opts=None):
        store = c10d._get_default_store()
        key = "TEST:DummyProcessGroup:barrier"
        if self.rank() == 0:
            worker_count = 0
            while worker_count < self.size() - 1:
                worker_count = store.add(key, 0)
        else:
            store.add(key, 1)
        return DummyWork()

    def abort(self) -> None:
        self._aborted = True

    def shutdown(self) -> None:
        self._shutdown = True


def create_dummy(store, group_rank, group_size, timeout):
    return DummyProcessGroup(group_rank, group_size)


@pytest.fixture
def saved_registry():
    """Restore the class-level Backend registry after a test registers "dummy"."""
    names = ("_plugins", "backend_list", "backend_capability", "backend_type_map")
    saved = {name: copy.deepcopy(getattr(dist.Backend, name)) for name in names}
    saved["default_device_backend_map"] = dict(dist.Backend.default_device_backend_map)
    had_dummy = hasattr(dist.Backend, "DUMMY")
    yield
    for name, value in saved.items():
        setattr(dist.Backend, name, value)
    if not had_dummy and hasattr(dist.Backend, "DUMMY"):
        delattr(dist.Backend, "DUMMY")


def _register_dummy():
    with warnings.catch_warnings():  # torch's "Device capability of dummy unspecified"
        warnings.simplefilter("ignore")
        dist.Backend.register_backend("dummy", create_dummy)


# -- seed ports: in-process ones -----------------------------------------------------------
def test_get_backend_name():
    dpg = DummyProcessGroup(0, 1)
    assert "Dummy" == dpg.name()  # noqa: SIM300


@pytest.mark.usefixtures("saved_registry")
def test_backend_class_attr():
    _register_dummy()
    assert dist.Backend.DUMMY == "dummy"
    assert dist.Backend._plugins["DUMMY"].creator_fn == create_dummy


@pytest.mark.usefixtures("saved_registry")
def test_is_backend_available():
    assert dist.is_ucc_available() == dist.is_backend_available("ucc")
    assert not dist.is_backend_available("dummy")
    _register_dummy()
    assert dist.is_backend_available("dummy")


@pytest.mark.usefixtures("saved_registry")
def test_backend_config():
    _register_dummy()
    # torch 2.13: a backend registered without devices serves cpu and cuda (its
    # BackendConfig("dummy") is "cpu:dummy,cuda:dummy" on a CPU-only machine too)
    dummy_backend_config = "cpu:dummy,cuda:dummy"
    backend_config_strings_and_expected_values = [
        (dist.Backend.GLOO, "cpu:gloo,cuda:gloo"),
        (dist.Backend.NCCL, "cuda:nccl"),
        (dist.Backend.MPI, "cpu:mpi,cuda:mpi"),
        (dist.Backend.UCC, "cpu:ucc,cuda:ucc"),
        (dist.Backend.DUMMY, dummy_backend_config),
        ("DUMMY", dummy_backend_config),
        ("dummy", dummy_backend_config),
        ("cpu:dummy,cuda:dummy", "cpu:dummy,cuda:dummy"),
        ("cpu:dummy,cuda:nccl", "cpu:dummy,cuda:nccl"),
        ("cpu:gloo,cuda:dummy", "cpu:gloo,cuda:dummy"),
        ("cpu:gloo,cuda:nccl", "cpu:gloo,cuda:nccl"),
    ]
    for config_str, expected_value in backend_config_strings_and_expected_values:
        config = dist.BackendConfig(config_str)
        assert str(config) == expected_value, config_str

    invalid_backend_config_strings = [
        "cpu:gloo,cuda:nccl,",  # trailing comma
        "cpu:gloo,cuda:nccl,cpu:dummy",  # duplicate device
        "cpu:gloo,xpu:xccl,",  # trailing comma
        "cpu:gloo,xpu:xccl,cpu:dummy",  # duplicate device
    ]
    for config_str in invalid_backend_config_strings:
        with pytest.raises(ValueError):
            dist.BackendConfig(config_str)


# -- seed ports: multi-process ones --------------------------------------------------------
def _env(ctx):
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["MASTER_PORT"] = ctx.env["MASTER_PORT"]  # torch's test: a fixed "6789"


def multiple_backends(ctx):
    _register_dummy()
    _env(ctx)
    dist.init_process_group(
        "cpu:dummy,cuda:dummy,xpu:dummy", rank=ctx.rank, world_size=ctx.world_size
    )

    input_tensor = torch.ones(2, 2) * 7
    output_tensor_list = [torch.zeros(2, 2) for _ in range(ctx.world_size)]
    dist.all_gather(output_tensor_list, input_tensor)

    dist.barrier()
    dist.destroy_process_group()
    return [t.tolist() for t in output_tensor_list]


@world_sizes(2, 3)
def test_init_process_group_with_multiple_backends(world_size):
    results = spawn(multiple_backends, world_size, timeout=TIMEOUT)
    assert results == [[[[7.0, 7.0]] * 2] * world_size] * world_size


def shutdown_seed(ctx):
    _register_dummy()
    _env(ctx)
    dist.init_process_group("dummy", rank=ctx.rank, world_size=ctx.world_size)
    pg = c10d._get_default_group()
    dist.destroy_process_group()
    assert pg._shutdown and not pg._aborted


def abort_seed(ctx):
    _register_dummy()
    _env(ctx)
    dist.init_process_group("dummy", rank=ctx.rank, world_size=ctx.world_size)
    pg = c10d._get_default_group()
    c10d._abort_process_group()
    assert pg._aborted and not pg._shutdown
    assert not dist.is_initialized()


@world_sizes(2, 3)
def test_shutdown(world_size):
    spawn(shutdown_seed, world_size, timeout=TIMEOUT)


@world_sizes(2, 3)
def test_abort(world_size):
    spawn(abort_seed, world_size, timeout=TIMEOUT)


# -- pyc10d against the installed torch ----------------------------------------------------
CONFIG_STRINGS = [
    "gloo",
    "GLOO",
    "nccl",
    "mpi",
    "ucc",
    "xccl",
    "undefined",
    "cpu:gloo,cuda:nccl",
    "CPU:GLOO",
    "cpu:gloo, cuda:nccl",
    "cuda:gloo",
    "cpu:mpi",
    "abc:gloo",
    "cpu:foo",
    "foo",
    "cpu:gloo,cpu:nccl",
    "cpu:gloo;cuda:nccl",
    "cpu:gloo,cuda:nccl,",
    "cpu:gloo:x",
]


def _outcome(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return "ok", str(call())
        except Exception as exc:  # the error is the outcome compared
            return type(exc).__name__, str(exc)


@pytest.mark.parametrize("text", CONFIG_STRINGS)
def test_backend_config_and_availability_match_torch(text):
    assert _outcome(lambda: dist.BackendConfig(text)) == _outcome(lambda: tdist.BackendConfig(text))
    assert _outcome(lambda: dist.is_backend_available(text)) == _outcome(
        lambda: tdist.is_backend_available(text)
    )


def test_availability_is_this_installs():
    assert dist.is_gloo_available() and dist.is_backend_available("pyc10d")
    assert not dist.is_nccl_available() and not dist.is_backend_available("cuda:nccl")
    assert not (dist.is_mpi_available() or dist.is_ucc_available() or dist.is_xccl_available())
    assert not dist.is_backend_available("cpu:pyc10d,cuda:nccl")


@pytest.mark.parametrize(
    "device", ["cpu", "cuda", "cuda:1", torch.device("cpu"), "xpu", "mps", "meta"]
)
def test_default_backend_for_device_matches_torch(device):
    assert _outcome(lambda: dist.get_default_backend_for_device(device)) == _outcome(
        lambda: tdist.get_default_backend_for_device(device)
    )


INIT_ERRORS = [  # (backend string, torch's error class, the start of torch's message)
    ("cpu:pyc10d,cuda:nccl", RuntimeError, "Distributed package doesn't have NCCL built in"),
    ("cpu:gloo,cuda:nccl", RuntimeError, "Distributed package doesn't have NCCL built in"),
    ("cuda:nccl", RuntimeError, "Distributed package doesn't have NCCL built in"),
    ("nccl", RuntimeError, "Distributed package doesn't have NCCL built in"),
    ("mpi", RuntimeError, "Distributed package doesn't have MPI built in"),
    ("xccl", RuntimeError, "Distributed package doesn't have XCCL built in"),
    ("ucc", AssertionError, "Unknown c10d backend type UCC"),
    ("cpu:foo", AssertionError, "Unknown c10d backend type FOO"),
    ("foo", AssertionError, "Unknown backend type foo"),
    ("abc:gloo", RuntimeError, "Expected one of cpu, cuda"),
    ("cpu:gloo,cpu:nccl", ValueError, "Duplicate device type cpu"),
    ("cpu:gloo;cuda:nccl", ValueError, "Invalid device:backend pairing"),
]


def _torch_init_error(text: str) -> tuple[type, str]:
    """What torch's init_process_group raises for ``text`` here (world size 1)."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        url = f"file://{os.path.join(tmp, 'init')}"
        try:
            tdist.init_process_group(text, init_method=url, rank=0, world_size=1)
        except Exception as exc:
            return type(exc), str(exc)
        tdist.destroy_process_group()
    raise AssertionError(f"torch accepted {text!r}")


@pytest.mark.parametrize(("text", "kind", "start"), INIT_ERRORS)
def test_init_errors_are_torchs(text, kind, start):
    torch_kind, torch_message = _torch_init_error(text.replace("pyc10d", "gloo"))
    assert issubclass(torch_kind, kind) and torch_message.startswith(start)
    with pytest.raises(kind) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dist.init_process_group(text, store=dist.HashStore(), rank=0, world_size=1)
    assert str(info.value).startswith(torch_message)
    assert not dist.is_initialized()  # refused before anything was made


def config_groups(ctx):
    dist.init_process_group(
        "cpu:pyc10d", init_method=ctx.init_method, rank=ctx.rank, world_size=ctx.world_size
    )
    assert dist.get_backend() == "cpu:pyc10d" and dist.get_backend_config() == "cpu:pyc10d"
    t = torch.tensor([ctx.rank + 1.0])
    dist.all_reduce(t)
    assert t.item() == ctx.world_size * (ctx.world_size + 1) / 2
    sub = dist.new_group(backend="cpu:gloo,cuda:gloo")
    assert dist.get_backend(sub) == "cpu:gloo,cuda:gloo"
    assert dist.get_backend_config(sub) == "cpu:gloo,cuda:gloo"
    plain = dist.new_group(backend="gloo")
    assert (
        dist.get_backend(plain) == "gloo" and dist.get_backend_config(plain) == "cpu:gloo,cuda:gloo"
    )
    with pytest.raises(RuntimeError, match=r"^Distributed package doesn't have NCCL built in"):
        dist.new_group(backend="cpu:pyc10d,cuda:nccl")
    dist.all_reduce(t, group=sub)  # the failed new_group left the groups usable
    dist.destroy_process_group()
    with pytest.raises(RuntimeError, match=r"^Distributed package doesn't have NCCL built in"):
        dist.init_process_group(
            "cpu:pyc10d,cuda:nccl", store=ctx.store, rank=ctx.rank, world_size=ctx.world_size
        )
    assert not dist.is_initialized()
    return t.item()


@world_sizes(2, 3)
def test_config_string_groups(world_size):
    total = world_size * (world_size + 1) / 2
    assert spawn(config_groups, world_size, timeout=TIMEOUT) == [total * world_size] * world_size
