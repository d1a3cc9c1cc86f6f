"""Tests of the multi-process harness ``pyc10d.testing``.

The rank bodies are module-level functions: the ranks import this module by name
(``tests.testing.test_harness``, from the repository root pytest puts on ``sys.path``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest

import pyc10d as dist
import pyc10d.testing.harness as harness
from pyc10d.testing import (
    RankContext,
    RankFailedError,
    RankTimeoutError,
    spawn,
    world_sizes,
)

# -- rank bodies ----------------------------------------------------------------------------------


def rank_value(ctx: RankContext, scale: int) -> int:
    time.sleep(0.05 * (ctx.world_size - ctx.rank))  # higher ranks finish first
    return ctx.rank * scale


def rank_facts(ctx: RankContext) -> dict:
    env = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    return {
        "rank": ctx.rank,
        "world_size": ctx.world_size,
        "env": env,
        "master_port_env": int(os.environ["MASTER_PORT"]),
        "extra": os.environ.get("PYC10D_TEST_EXTRA"),
        "master": (ctx.master_addr, ctx.master_port),
        "tmpdir": ctx.tmpdir,
        "tmpdir_exists": os.path.isdir(ctx.tmpdir),
        "init_file": ctx.init_file,
        "init_file_exists": os.path.exists(ctx.init_file),
        "init_method": ctx.init_method,
        "pid": os.getpid(),
    }


def rank_store(ctx: RankContext, tag: str) -> tuple[int, bytes]:
    store = ctx.store
    keys_at_start = store.num_keys() if ctx.rank == 0 else 0
    if ctx.rank == 0:
        store.set("greeting", f"hello {tag}")
    return keys_at_start, store.get("greeting")


def rank_raises(ctx: RankContext) -> int:
    if ctx.rank == 1:
        raise ValueError(f"boom-marker from rank {ctx.rank}")
    return ctx.rank


def rank_exits(ctx: RankContext) -> int:
    if ctx.rank == 1:
        os._exit(7)
    return ctx.rank


def rank_sigkills_itself(ctx: RankContext) -> int:
    if ctx.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return ctx.rank


def rank_hangs(ctx: RankContext) -> int:
    if ctx.rank == 1:
        threading.Event().wait()
    return ctx.rank


def rank_fails_while_others_hang(ctx: RankContext) -> None:
    if ctx.rank == 0:
        raise RuntimeError("rank 0 gives up")
    time.sleep(1000)


def rank_fails_in_order(ctx: RankContext) -> None:
    if ctx.rank == 1:
        ctx.store.set("rank1_failing", b"1")
        raise KeyError("first failure")
    ctx.store.get("rank1_failing")
    time.sleep(0.3)
    raise KeyError(f"later failure of rank {ctx.rank}")


def rank_returns_unpicklable(ctx: RankContext):
    return lambda: ctx.rank


def rank_starts_subprocess(ctx: RankContext) -> int:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
    return child.pid


def rank_exchange(ctx: RankContext, init_method: str | None) -> str:
    """The example of the pyc10d.testing docstring (``None``: its ``file://`` init method)."""
    url = init_method or ctx.init_method
    store, rank, size = next(dist.rendezvous(url, ctx.rank, ctx.world_size))
    store.set(f"hello/{rank}", f"from {rank}")
    value = store.get(f"hello/{(rank + 1) % size}").decode()
    if rank == 0:  # with env://, rank 0 hosts the store: it leaves after the others' last request
        store.wait([f"done/{r}" for r in range(1, size)])
    else:
        store.set(f"done/{rank}", b"1")
    return value


def rank_nothing(ctx: RankContext) -> int:
    return ctx.rank


# -- isolation: every test must leave no processes and no temporary directories behind -----------


def _stray_processes() -> list[psutil.Process]:
    """Descendants of this process except multiprocessing's long-lived helper processes."""
    me = psutil.Process()
    helpers = set()
    for child in me.children():
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "forkserver import main" in cmdline or "resource_tracker" in cmdline:
            helpers.add(child.pid)
    return [p for p in me.children(recursive=True) if p.pid not in helpers]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Put spawn's temporary directories under ``tmp_path``; check nothing leaks from a test."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert _stray_processes() == []
    yield tmp_path
    assert _stray_processes() == [], "a rank process was left running"
    assert list(tmp_path.glob("pyc10d-spawn-*")) == [], "spawn left its tmpdir behind"


# -- results and context --------------------------------------------------------------------------


@world_sizes(2, 3)
def test_results_in_rank_order(world_size):
    assert spawn(rank_value, world_size, args=(10,)) == [10 * r for r in range(world_size)]


@world_sizes(2, 3)
def test_context_and_environment(world_size):
    facts = spawn(rank_facts, world_size, env={"PYC10D_TEST_EXTRA": "yes"})
    tmpdir, init_file, master = facts[0]["tmpdir"], facts[0]["init_file"], facts[0]["master"]
    assert master[0] == "127.0.0.1"
    assert os.path.dirname(init_file) == tmpdir
    assert len({f["pid"] for f in facts}) == world_size
    for rank, f in enumerate(facts):
        assert (f["rank"], f["world_size"]) == (rank, world_size)
        assert f["env"] == {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
        }
        assert f["extra"] == "yes"
        assert f["master_port_env"] == facts[0]["master_port_env"] != master[1]
        assert (f["tmpdir"], f["init_file"], f["master"]) == (tmpdir, init_file, master)
        assert f["tmpdir_exists"] and not f["init_file_exists"]
        assert f["init_method"] == f"file://{init_file}"
    assert not os.path.exists(tmpdir)


@world_sizes(2, 3)
def test_store_is_shared_and_fresh(world_size):
    for tag in ("first", "second"):
        results = spawn(rank_store, world_size, args=(tag,))
        assert results == [(0, f"hello {tag}".encode())] * world_size


@world_sizes(2, 3)
@pytest.mark.parametrize("init_method", [None, "env://"])
def test_documented_example_with_rendezvous(world_size, init_method):
    results = spawn(rank_exchange, world_size, args=(init_method,), timeout=30)
    assert results == [f"from {(r + 1) % world_size}" for r in range(world_size)]


# -- failures -------------------------------------------------------------------------------------


@world_sizes(2, 3)
def test_exception_names_the_rank(world_size):
    with pytest.raises(RankFailedError) as info:
        spawn(rank_raises, world_size)
    message = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert message.startswith("rank 1 failed:\nTraceback (most recent call last):")
    assert "ValueError: boom-marker from rank 1" in message
    assert "in rank_raises" in message
    assert info.value.rank == 1 and list(info.value.failures) == [1]


def test_exit_code_is_reported():
    with pytest.raises(RankFailedError, match=r"^rank 1 failed:\n.*exited with code 7"):
        spawn(rank_exits, 2)


def test_signal_is_reported():
    with pytest.raises(RankFailedError, match=r"^rank 1 failed:\n.*killed by signal SIGKILL"):
        spawn(rank_sigkills_itself, 2)


def test_unpicklable_result_is_a_failure():
    with pytest.raises(RankFailedError, match="returned a value that cannot be pickled"):
        spawn(rank_returns_unpicklable, 2)


def test_all_failures_listed_first_one_first():
    with pytest.raises(RankFailedError) as info:
        spawn(rank_fails_in_order, 3)
    message = str(info.value)
    assert message.startswith("rank 1 failed:")
    assert "KeyError: 'first failure'" in message
    assert "rank 0 failed:" in message and "rank 2 failed:" in message
    assert info.value.rank == 1 and set(info.value.failures) == {0, 1, 2}


def test_ranks_still_running_after_a_failure_are_killed(monkeypatch):
    monkeypatch.setattr(harness, "FAILURE_GRACE_SECONDS", 0.5)
    start = time.monotonic()
    with pytest.raises(RankFailedError) as info:
        spawn(rank_fails_while_others_hang, 3, timeout=30)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert message.startswith("rank 0 failed:")
    assert "RuntimeError: rank 0 gives up" in message
    assert "rank(s) 1, 2 still running 0.5 s after the first failure were killed" in message


# -- timeouts -------------------------------------------------------------------------------------


def test_hang_times_out_with_stack_dump():
    start = time.monotonic()
    with pytest.raises(RankTimeoutError) as info:
        spawn(rank_hangs, 3, timeout=3)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert message.startswith("rank(s) 1 still running after the timeout of 3 s (rank(s) 0, 2")
    assert info.value.ranks == [1] and info.value.timeout == 3
    assert "in rank_hangs" in info.value.stacks[1]
    assert "in rank_hangs" in message
    assert "_watch_parent" not in message


# -- cleanup and start methods --------------------------------------------------------------------


def test_processes_started_by_a_rank_are_killed():
    pids = spawn(rank_starts_subprocess, 2)
    deadline = time.monotonic() + 5
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"subprocess {pid} of a rank is still running")


def test_spawn_start_method():
    assert spawn(rank_value, 2, args=(3,), start_method="spawn") == [0, 3]


def test_forkserver_spawn_is_fast():
    spawn(rank_nothing, 3)  # starts the forkserver, if no test did yet
    start = time.perf_counter()
    assert spawn(rank_nothing, 3) == [0, 1, 2]
    assert time.perf_counter() - start < 1.0


def test_bad_arguments():
    with pytest.raises(TypeError, match="module-level function"):
        spawn(lambda ctx: 0, 2)
    with pytest.raises(ValueError, match="world_size"):
        spawn(rank_nothing, 0)
    with pytest.raises(ValueError, match="start_method"):
        spawn(rank_nothing, 2, start_method="fork")
    with pytest.raises(ValueError, match="timeout"):
        spawn(rank_nothing, 2, timeout=0)
