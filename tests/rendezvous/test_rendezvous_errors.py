"""Rendezvous mistakes fail fast or say what they wait for (issue 17, item 2).

A world-size mismatch is an immediate error on every rank that reached the store, naming both
values and both ranks; a rank retrying an address where nobody listens, and rank 0 waiting for
missing ranks, log progress lines; a timeout says how many of how many ranks joined.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest

import pyc10d
from pyc10d import DistNetworkError, DistStoreError, HashStore, TCPStore
from pyc10d.store.tcp.join import (
    PROGRESS_ENV,
    JoinSpec,
    format_ranks,
    join,
    progress_clock,
    progress_interval,
)
from pyc10d.testing import free_port

PREFIX = "\x00pyc10d/test-join/"
JOIN_LOGGER = "pyc10d.store.tcp.join"
TCP_STORE_LOGGER = "pyc10d.store.tcp_store"


def spec(rank: int, world_size: int, timeout_s: float = 60.0, **kwargs) -> JoinSpec:
    return JoinSpec(
        PREFIX, world_size, "test:1", timeout_s, is_master=rank == 0, rank=rank, **kwargs
    )


class _Joiner(threading.Thread):
    """Runs join() in a thread and keeps what it raised."""

    def __init__(self, store, join_spec: JoinSpec) -> None:
        super().__init__(daemon=True)
        self.store, self.spec, self.error = store, join_spec, None

    def run(self) -> None:
        try:
            join(self.store, self.spec)
        except Exception as exc:  # the test inspects it
            self.error = exc


class _WaitFor(logging.Handler):
    """Collects the records of a logger; ``seen`` is set once one contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.messages: list[str] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(f"{record.levelname} {message}")
        if self.text in message:
            self.seen.set()


@pytest.fixture
def watch():
    """``watch(logger_name, text)``: a :class:`_WaitFor` attached to that logger for the test."""
    attached = []

    def attach(name: str, text: str) -> _WaitFor:
        handler = _WaitFor(text)
        logging.getLogger(name).addHandler(handler)
        attached.append((name, handler))
        return handler

    yield attach
    for name, handler in attached:
        logging.getLogger(name).removeHandler(handler)


# -- world-size mismatch -------------------------------------------------------------------------


def test_mismatch_found_by_rank0_fails_the_waiting_rank_too():
    """Rank 1 (world size 3) joined first and waits; rank 0 (world size 2) finds the mismatch:
    both fail at once with one message naming both values and both ranks."""
    store = HashStore()
    rank1 = _Joiner(store, spec(1, 3))
    rank1.start()
    store.wait([PREFIX + "ranks"], timedelta(seconds=10))  # rank 1 is in
    start = time.monotonic()
    with pytest.raises(DistStoreError) as info:
        join(store, spec(0, 2))
    rank1.join(10)
    assert time.monotonic() - start < 5  # not the 60 s timeout
    expected = "rank 0 has world_size=2 but rank 1 has world_size=3"
    assert expected in str(info.value)
    assert "world size mismatch in the rendezvous at test:1" in str(info.value)
    assert not rank1.is_alive()
    assert isinstance(rank1.error, DistStoreError) and expected in str(rank1.error)


def test_mismatch_found_by_the_wrong_rank_fails_rank0_too():
    """Rank 0 (world size 2) waits; rank 1 connects with world size 3: it fails at once, and so
    does rank 0, instead of waiting for a second rank that never comes."""
    store = HashStore()
    rank0 = _Joiner(store, spec(0, 2))
    rank0.start()
    store.wait([PREFIX + "ranks"], timedelta(seconds=10))
    start = time.monotonic()
    with pytest.raises(DistStoreError, match="rank 1 has world_size=3 but rank 0 has world_size=2"):
        join(store, spec(1, 3))
    rank0.join(10)
    assert time.monotonic() - start < 5
    assert not rank0.is_alive()
    assert "rank 1 has world_size=3 but rank 0 has world_size=2" in str(rank0.error)


def test_a_late_rank_with_the_wrong_size_fails_alone():
    """Once the rendezvous completed, a late rank with another world size still fails at once."""
    store = HashStore()
    join(store, spec(0, 1))
    with pytest.raises(DistStoreError, match="rank 1 has world_size=2 but rank 0 has world_size=1"):
        join(store, spec(1, 2))


def test_a_rank_joined_twice_is_an_error():
    store = HashStore()
    join(store, spec(1, 3, wait=False))
    store.set(PREFIX + "rank/2", b"other-host (pid 1)")  # another process holds rank 2
    with pytest.raises(DistStoreError, match=r"rank 2 joined .* twice: from other-host \(pid 1\)"):
        join(store, spec(2, 3))


def test_mismatch_across_processes_with_env_init(tmp_path):
    """The issue's case: one rank started with WORLD_SIZE=2, another with 3, default (30 min)
    timeout. Both exit at once, each printing the mismatch."""
    script = tmp_path / "init.py"
    script.write_text(
        "import pyc10d as dist\n"
        "try:\n"
        "    dist.init_process_group('gloo')\n"
        "except dist.DistStoreError as exc:\n"
        "    raise SystemExit(f'FAILED: {exc}')\n"
    )
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env=dict(env, RANK=str(rank), WORLD_SIZE=str(size)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank, size in ((0, 2), (1, 3))
    ]
    try:
        outputs = [proc.communicate(timeout=90) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 1, err[-2000:]
        assert "FAILED: world size mismatch in the rendezvous at 127.0.0.1:" in err, err[-2000:]
        assert (
            "rank 1 has world_size=3 but rank 0 has world_size=2" in err
            or "rank 0 has world_size=2 but rank 1 has world_size=3" in err
        ), err[-2000:]


# -- progress lines and timeouts -----------------------------------------------------------------


def test_rank0_progress_line_names_the_missing_ranks(monkeypatch, watch):
    """Rank 0 logs who is missing while it waits; the rendezvous completes when they come."""
    monkeypatch.setenv(PROGRESS_ENV, "0.1")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    progress = watch(JOIN_LOGGER, "waiting for rank 2 (2/3 joined)")
    results: dict[int, object] = {}

    def rank(r: int) -> None:
        try:
            results[r] = next(pyc10d.rendezvous(url, r, 3, timeout=timedelta(seconds=60)))
        except Exception as exc:  # reported below
            results[r] = exc

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in (0, 1)]
    for thread in threads:
        thread.start()
    assert progress.seen.wait(30), progress.messages
    rank(2)
    for thread in threads:
        thread.join(30)
    stores = [results[r][0] for r in range(3)]  # all three completed (an error is not a tuple)
    line = next(m for m in progress.messages if "waiting for rank 2 (2/3 joined)" in m)
    assert line.startswith(
        f"WARNING pyc10d: rank 0 waiting for rank 2 (2/3 joined) at 127.0.0.1:{port}, "
    )
    assert line.endswith(" s of 60 s")
    for store in reversed(stores):
        store.close()


def test_timeout_says_how_many_ranks_joined(monkeypatch, watch):
    monkeypatch.setenv(PROGRESS_ENV, "0.1")
    progress = watch(JOIN_LOGGER, "waiting for ranks 1, 2 (1/3 joined)")
    start = time.monotonic()
    with pytest.raises(DistStoreError) as info:
        next(
            pyc10d.rendezvous("tcp://127.0.0.1:0?rank=0&world_size=3", timeout=timedelta(seconds=1))
        )
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "timed out after 1000ms on rank 0: 1/3 ranks joined, still missing ranks 1, 2" in message
    assert progress.seen.is_set(), progress.messages


def test_waiting_rank_timeout_counts_the_others():
    """A rank other than 0 that joined and waits also says N/M joined and who is missing."""
    store = HashStore()
    join(store, spec(0, 3, wait=False))
    with pytest.raises(DistStoreError, match=r"on rank 1: 2/3 ranks joined, still missing rank 2$"):
        join(store, spec(1, 3, timeout_s=0.3))


def test_client_retrying_a_dead_port_logs_the_address(monkeypatch, watch):
    """A wrong MASTER_PORT: the client says which address it keeps trying."""
    monkeypatch.setenv(PROGRESS_ENV, "0.2")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        progress = watch(TCP_STORE_LOGGER, f"still trying to connect to 127.0.0.1:{port}")
        with pytest.raises(DistNetworkError, match=rf"timed out.*127\.0\.0\.1:{port}"):
            TCPStore("127.0.0.1", port, timeout=timedelta(seconds=1.5))
    assert progress.seen.is_set(), progress.messages
    assert progress.messages[0].startswith(
        f"WARNING pyc10d: TCPStore client still trying to connect to 127.0.0.1:{port} ("
    )
    assert "s of 1.5 s; is the master (rank 0) running" in progress.messages[0]


def test_wrong_port_progress_reaches_stderr_without_logging_config(tmp_path):
    """The progress lines are WARNINGs: a script with no logging setup shows them on stderr."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        env = dict(
            os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="1", WORLD_SIZE="2"
        )
        env[PROGRESS_ENV] = "0.3"
        env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
        code = (
            "import datetime, pyc10d as dist\n"
            "dist.init_process_group(timeout=datetime.timedelta(seconds=2))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90
        )
    assert done.returncode != 0
    assert f"pyc10d: TCPStore client still trying to connect to 127.0.0.1:{port}" in done.stderr
    assert "DistNetworkError" in done.stderr


# -- helpers -------------------------------------------------------------------------------------


def test_progress_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert progress_interval() == 30.0
    monkeypatch.setenv(PROGRESS_ENV, "2.5")
    assert progress_interval() == 2.5
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert progress_interval() == math.inf
    monkeypatch.setenv(PROGRESS_ENV, "soon")
    with pytest.raises(ValueError, match=f"{PROGRESS_ENV} must be a number"):
        progress_interval()


def test_message_formatting():
    assert format_ranks([2]) == "rank 2"
    assert format_ranks([1, 2]) == "ranks 1, 2"
    assert format_ranks(list(range(1, 13))) == "ranks 1, 2, 3, 4, 5, 6, 7, 8 and 4 more"
    assert progress_clock(30.2, 1800) == "30 s of 1800 s"
    assert progress_clock(1.04, 3.5) == "1 s of 3.5 s"
    assert progress_clock(12, 0) == "12 s, no timeout"
