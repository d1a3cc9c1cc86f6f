"""``pyc10d-run``: worker variables, failures, signals, hangs, restarts and output.

Most tests call the launcher in this process (``pyc10d.run.main``), so that only the workers
start fresh interpreters (they import no torch); two go through ``python -m pyc10d.run`` and the
``pyc10d-run`` console script.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pyc10d.launcher.report import traceback_tail
from pyc10d.run import main, parse_config
from pyc10d.testing import free_port

pytestmark = pytest.mark.timeout(45)

SCRIPTS = Path(__file__).parent / "scripts"
WORKER = str(SCRIPTS / "launch_worker.py")
FAST = ["--monitor-interval", "0.05", "--shutdown-timeout", "2"]


def records(out: Path) -> dict[int, dict]:
    """What each rank wrote: ``{rank: {"env": ..., "argv": ..., "pid": ..., "child": ...}}``."""
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for init to reap it counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_no_survivors(out: Path, expected_ranks: int) -> None:
    """Every worker, and every child a worker started, has exited."""
    found = records(out)
    assert len(found) == expected_ranks, found
    pids = [r["pid"] for r in found.values()] + [r["child"] for r in found.values() if r["child"]]
    deadline = time.monotonic() + 5
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if not gone(pid)] == []


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.parametrize(
    "node_flags, ranks, group_rank",
    [([], [0, 1, 2], 0), (["--nnodes", "2", "--node-rank", "1"], [3, 4, 5], 1)],
    ids=["one-node", "second-of-two-nodes"],
)
def test_workers_get_torchrun_variables_and_script_args(
    out, monkeypatch, node_flags, ranks, group_rank
):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    port = free_port()
    argv = ["--nproc-per-node", "3", "--master-port", str(port), *node_flags, *FAST]
    assert main([*argv, WORKER, "--out", str(out), "--child", "a", "b"]) == 0
    found = records(out)
    assert sorted(found) == ranks
    world_size = 3 * (group_rank + 1) if node_flags else 3
    for local_rank, rank in enumerate(ranks):
        env, argv_seen = found[rank]["env"], found[rank]["argv"]
        assert env == {
            "RANK": str(rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": "3",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "GROUP_RANK": str(group_rank),
            "ROLE_RANK": str(rank),
            "GROUP_WORLD_SIZE": str(group_rank + 1),
            "ROLE_NAME": "default",
            "TORCHELASTIC_RESTART_COUNT": "0",
            "TORCHELASTIC_MAX_RESTARTS": "0",
            "OMP_NUM_THREADS": "1",
        }
        assert argv_seen == ["--out", str(out), "--child", "a", "b"]
    assert_no_survivors(out, 3)  # the children the workers left behind are killed too


def test_module_form_and_omp_notice(out, monkeypatch, capfd):
    monkeypatch.setenv("PYTHONPATH", str(SCRIPTS))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert main(["--nproc_per_node", "2", *FAST, "-m", "launch_worker", "--out", str(out)]) == 0
    assert sorted(records(out)) == [0, 1]
    assert "Setting OMP_NUM_THREADS environment variable for each process" in capfd.readouterr().err


def test_crash_stops_the_others_and_reports(out, capfd):
    argv = ["--nproc-per-node", "3", *FAST, WORKER, "--out", str(out), "--child", "--sleep", "60"]
    started = time.monotonic()
    assert main([*argv, "--crash-rank", "1"]) == 1
    assert time.monotonic() - started < 20
    assert_no_survivors(out, 3)
    err = capfd.readouterr().err
    assert "pyc10d-run: rank 1 (local_rank 1) exited with code 1; stopping 2 other worker(s)" in err
    report = err[err.index("launch_worker.py FAILED") :]
    assert "Root Cause (first observed failure):" in report
    assert "rank      : 1 (local_rank: 1)" in report
    assert "exitcode  : 1 (pid: " in report
    assert "traceback : Traceback (most recent call last):" in report
    assert "RuntimeError: boom from rank 1" in report


def test_signal_death_is_named(out, capfd):
    argv = ["--nproc-per-node", "2", *FAST, WORKER, "--out", str(out), "--sleep", "60"]
    assert main([*argv, "--signal-rank", "0"]) == 1
    assert_no_survivors(out, 2)
    err = capfd.readouterr().err
    assert "rank 0 (local_rank 0) was killed by signal SIGUSR1 (exit code -10)" in err
    assert "exitcode  : -10 (pid: " in err and "(SIGUSR1)" in err
    assert "Signal 10 (SIGUSR1) received by PID" in err


def test_timeout_kills_hung_workers(out, capfd):
    argv = ["--nproc-per-node", "3", "--timeout", "1.5", "--shutdown-timeout", "0.5"]
    started = time.monotonic()
    assert main([*argv, WORKER, "--out", str(out), "--hang", "--child"]) == 124
    assert time.monotonic() - started < 10
    assert_no_survivors(out, 3)  # ranks 1, 2 ignored SIGTERM: SIGKILL after the grace
    err = capfd.readouterr().err
    assert "timed out after 1.5 s (--timeout): ranks 1, 2 still running; killing all workers" in err


def test_max_restarts_recovers_from_a_first_failure(out, capfd):
    argv = ["--nproc-per-node", "2", "--max-restarts", "1", *FAST, WORKER, "--out", str(out)]
    assert main([*argv, "--fail-first-attempt-rank", "1"]) == 0
    assert {r["env"]["TORCHELASTIC_RESTART_COUNT"] for r in records(out).values()} == {"1"}
    err = capfd.readouterr().err
    assert "rank 1 (local_rank 1) exited with code 3" in err
    assert "restarting it (restart 1 of 1)" in err
    assert "FAILED" not in err


def test_without_restarts_the_first_failure_is_final(out):
    argv = ["--nproc-per-node", "2", *FAST, WORKER, "--out", str(out)]
    assert main([*argv, "--fail-first-attempt-rank", "1"]) == 1


def test_prefix_and_local_ranks_filter(out, capfd):
    argv = ["--nproc-per-node", "3", "--prefix", *FAST, WORKER, "--out", str(out), "--say", "hi"]
    assert main(argv) == 0
    lines = capfd.readouterr().out.splitlines()
    assert sorted(line for line in lines if "hi" in line) == [
        f"[rank {r}]: hi {r}" for r in range(3)
    ]
    argv = ["--nproc-per-node", "3", "--local-ranks-filter", "1", *FAST, WORKER, "--out", str(out)]
    assert main([*argv, "--say", "hey"]) == 0
    assert [line for line in capfd.readouterr().out.splitlines() if "hey" in line] == ["hey 1"]


def test_bad_flags_exit_2(capsys):
    for argv in (
        ["--nproc-per-node", "0", "x.py"],
        ["--nnodes", "1:4", "x.py"],
        ["--nnodes", "2", "--node-rank", "2", "x.py"],
        ["--no-python", "-m", "x"],
    ):
        with pytest.raises(SystemExit) as exc:
            parse_config(argv)
        assert exc.value.code == 2, argv
    assert "node ranges (MIN:MAX) need --rdzv-backend c10d" in capsys.readouterr().err


def test_traceback_tail_starts_at_the_traceback():
    lines = ["noise", "Traceback (most recent call last):", '  File "x"', "ValueError: v"]
    assert traceback_tail(lines) == lines[1:]
    assert traceback_tail(["a", "b", "c"], limit=2) == ["b", "c"]


def test_real_rendezvous_through_the_launcher(out):
    """Workers meet through env:// with the launcher's variables and all_reduce."""
    script = str(SCRIPTS / "launch_allreduce.py")
    assert main(["--nproc-per-node", "2", "--timeout", "40", *FAST, script, str(out)]) == 0
    found = {p.name: json.loads(p.read_text()) for p in out.glob("rank*.json")}
    assert found == {f"rank{r}.json": {"world": 2, "sum": 3.0} for r in range(2)}


def test_auth_gives_workers_one_fresh_key_and_their_store_refuses_strangers(out, monkeypatch):
    monkeypatch.delenv("PYC10D_AUTH_KEY", raising=False)
    monkeypatch.delenv("PYC10D_AUTH_KEY_FILE", raising=False)
    script = str(SCRIPTS / "launch_auth.py")
    argv = ["--nproc-per-node", "2", "--auth", "--timeout", "40", *FAST, script, str(out)]
    assert main(argv) == 0
    found = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
    assert [r["sum"] for r in found] == [3.0, 3.0]
    assert found[0]["key"] is not None and found[0]["key"] == found[1]["key"]
    assert all("authentication required" in r["refused"] for r in found), found
    assert "PYC10D_AUTH_KEY" not in os.environ  # made for the workers, not kept here
    with pytest.raises(SystemExit):  # several nodes cannot agree on a made-up key
        parse_config(["--nnodes", "2", "--auth", script])


def _read_until(proc: subprocess.Popen, needle: str, timeout: float) -> str:
    """Read the launcher's stdout until ``needle`` shows up (the workers still running)."""
    assert proc.stdout is not None
    seen, deadline = "", time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.1)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096).decode()
            if not chunk:
                break
            seen += chunk
    assert needle in seen, seen
    return seen


def test_sigint_stops_workers_and_output_streams_live(out):
    """``python -m pyc10d.run``: live, prefixed output; Ctrl-C reaches every worker; no orphans."""
    argv = ["--nproc-per-node", "2", "--prefix", "--shutdown-timeout", "5", WORKER]
    cmd = [sys.executable, "-m", "pyc10d.run", *argv, "--out", str(out), "--child"]
    proc = subprocess.Popen(
        [*cmd, "--say", "ready", "--sleep", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        seen = _read_until(proc, "[rank 1]: ready 1", timeout=30)
        if "[rank 0]: ready 0" not in seen:
            _read_until(proc, "[rank 0]: ready 0", timeout=10)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = err.decode()
    assert "received SIGINT; forwarding it to 2 running worker(s)" in text
    assert "[rank 0]: KeyboardInterrupt" in text and "[rank 1]: KeyboardInterrupt" in text
    assert_no_survivors(out, 2)


def test_console_script(out):
    exe = Path(sys.executable).parent / "pyc10d-run"
    if not exe.exists():
        pytest.skip("pyc10d is not installed in this environment (no pyc10d-run script)")
    result = subprocess.run(
        [str(exe), "--nproc-per-node", "2", WORKER, "--out", str(out), "--say", "ok"],
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines) == ["ok 0", "ok 1"], (result.stdout, result.stderr)


class _Recorder:
    """A stand-in Console that records every write."""

    def __init__(self):
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def test_pump_forwards_whole_lines_only():
    """An unbuffered print writes its text and its newline apart: the pump must not forward the
    text alone (another worker's line could land in between); a carriage return (progress bar)
    and the end of the stream also flush. Pieces are fed one by one, as separate reads."""
    from pyc10d.launcher.output import StreamPump

    read_fd, write_fd = os.pipe()
    console = _Recorder()
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pump = StreamPump(pipe, console)
        for piece in (b"ok 1", b"\n", b"10%", b"\r20%", b"\r", b"tail"):
            pump._feed(piece)
        pump._finish()
    os.close(write_fd)
    assert console.writes == [b"ok 1\n", b"10%\r", b"20%\r", b"tail"]
    assert pump.tail() == ["ok 1", "10%\r20%\rtail"]  # the tail keeps lines as "\n" ends them
