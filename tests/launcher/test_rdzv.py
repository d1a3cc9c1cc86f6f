"""``pyc10d-run --rdzv-backend c10d``: launchers agree on node ranks through a TCPStore.

Each test starts its "nodes" as ``python -m pyc10d.run`` processes on this machine, all with
the same ``--rdzv-endpoint 127.0.0.1:<free port>``: the first to bind the port serves the
store, the others connect to it (torch's c10d rendezvous does the same).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyc10d.launcher.config import RdzvSettings
from pyc10d.run import main, parse_config
from pyc10d.testing import free_port

pytestmark = pytest.mark.timeout(90)

SCRIPTS = Path(__file__).parent / "scripts"
WORKER = str(SCRIPTS / "launch_worker.py")
FAST = ["--monitor-interval", "0.05", "--shutdown-timeout", "2"]


def c10d(nnodes: str, port: int, *extra: str) -> list[str]:
    """The flags of one node of a c10d job at ``127.0.0.1:port``."""
    endpoint = f"127.0.0.1:{port}"
    return ["--nnodes", nnodes, "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, *extra]


def run_nodes(argvs: list[list[str]], timeout: float = 70) -> list[tuple[int, str, str]]:
    """Run one ``python -m pyc10d.run`` per argv at once; each one's (exit code, out, err)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pyc10d.run", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def records(out: Path) -> dict[int, dict]:
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}


def test_two_launchers_agree_on_ranks_and_all_reduce(tmp_path):
    """Nodes of 2 and 1 workers: global ranks 0..2, each once, contiguous per node; one master;
    the all_reduce of rank + 1 gives 6 everywhere."""
    port = free_port()
    script = [str(SCRIPTS / "launch_rdzv.py"), str(tmp_path)]
    flags = [*c10d("2", port, "--rdzv-id", "ar"), "--timeout", "60", *FAST]
    results = run_nodes([[*flags, "--nproc-per-node", n, *script] for n in ("2", "1")])
    for code, out, err in results:
        assert code == 0, (out, err)
    found = records(tmp_path)
    assert sorted(found) == [0, 1, 2]
    assert {r["sum"] for r in found.values()} == {6.0}
    envs = [found[rank]["env"] for rank in range(3)]
    assert {(e["WORLD_SIZE"], e["GROUP_WORLD_SIZE"], e["MASTER_PORT"]) for e in envs} == {
        ("3", "2", envs[0]["MASTER_PORT"])
    }
    by_node: dict[str, list[dict]] = {}
    for env in envs:
        by_node.setdefault(env["GROUP_RANK"], []).append(env)
    assert sorted(by_node) == ["0", "1"]
    for group in by_node.values():  # one node's workers: local ranks 0.. in rank order
        assert [e["LOCAL_RANK"] for e in group] == [str(i) for i in range(len(group))]
        assert {e["LOCAL_WORLD_SIZE"] for e in group} == {str(len(group))}
    printed = sorted(line for _, out, _ in results for line in out.splitlines())
    assert printed == [f"rank {r} of 3: sum 6" for r in range(3)]
    said = [line for _, _, err in results for line in err.splitlines() if "node rank" in line]
    assert len(said) == 2 and any("node rank 0 of 2" in line for line in said), said


def test_a_failure_stops_the_other_node_and_both_restart(tmp_path):
    """Attempt 0: rank 1 exits 3 while rank 0 (other node) would sleep 60 s: it is stopped,
    both nodes meet again and attempt 1 succeeds."""
    port = free_port()
    flags = [*c10d("2", port), "--max-restarts", "1", "--timeout", "60", *FAST]
    script = [WORKER, "--out", str(tmp_path), "--fail-first-attempt-rank", "1"]
    started = time.monotonic()
    results = run_nodes([[*flags, *script, "--sleep-first-attempt", "60"]] * 2)
    assert time.monotonic() - started < 45
    assert [code for code, _, _ in results] == [0, 0], results
    found = records(tmp_path)
    assert sorted(found) == [0, 1]
    assert {r["env"]["TORCHELASTIC_RESTART_COUNT"] for r in found.values()} == {"1"}
    err = "".join(err for _, _, err in results)
    assert "rank 1 (local_rank 0) exited with code 3" in err
    assert "failed; stopping this node's 1 running worker(s)" in err
    assert err.count("restarting it (restart 1 of 1)") == 2


def test_without_restarts_a_failure_stops_every_node(tmp_path):
    port = free_port()
    flags = [*c10d("2", port), "--timeout", "60", *FAST]
    script = [WORKER, "--out", str(tmp_path), "--crash-rank", "0", "--sleep", "60"]
    started = time.monotonic()
    results = run_nodes([[*flags, *script]] * 2)
    assert time.monotonic() - started < 45
    assert [code for code, _, _ in results] == [1, 1], results
    reports = [err for _, _, err in results if "launch_worker.py FAILED" in err]
    assert len(reports) == 1 and "RuntimeError: boom from rank 0" in reports[0]
    stopped = [err for _, _, err in results if "the workers of node" in err]
    assert len(stopped) == 1 and "stopping this node's 1 running worker(s)" in stopped[0]


def test_a_node_too_many_is_turned_away(tmp_path):
    """A third launcher for a 2-node job, arriving while the job runs, is refused; the job
    itself completes. (Its workers wait for a file the test creates once the third is gone:
    a launcher that arrives after the job ended finds no store to refuse it.)"""
    port = free_port()
    go = tmp_path / "go"
    flags = [*c10d("2", port), "--timeout", "60", *FAST, WORKER, "--out", str(tmp_path)]
    job = [
        subprocess.Popen(
            [sys.executable, "-m", "pyc10d.run", *flags, "--wait-file", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(records(tmp_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # polls a condition: both workers of the job are running
        assert sorted(records(tmp_path)) == [0, 1]
        [(code, _, err)] = run_nodes([flags])
        assert code == 1, err
        assert "closed with 2 node(s) before this node joined" in err
        go.touch()
        for proc in job:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, (out, err)
    finally:
        for proc in job:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert sorted(records(tmp_path)) == [0, 1]


def test_node_range_starts_with_the_nodes_there_after_last_call(tmp_path, capfd):
    port = free_port()
    conf = ["--rdzv-conf", "last_call_timeout=1,join_timeout=30"]
    argv = [*c10d("1:2", port, *conf), "--nproc-per-node", "2", *FAST]
    assert main([*argv, WORKER, "--out", str(tmp_path)]) == 0
    found = records(tmp_path)
    assert sorted(found) == [0, 1]
    assert {r["env"]["WORLD_SIZE"] for r in found.values()} == {"2"}
    assert "node rank 0 of 1: ranks 0..1 of 2" in capfd.readouterr().err


def test_join_timeout_when_a_node_is_missing(tmp_path, capfd):
    port = free_port()
    argv = [*c10d("2", port, "--rdzv-conf", "join_timeout=1"), *FAST]
    started = time.monotonic()
    assert main([*argv, WORKER, "--out", str(tmp_path)]) == 1
    assert time.monotonic() - started < 20
    err = capfd.readouterr().err
    assert "rendezvous failed: timed out after 1 s (join_timeout) waiting for nodes: 1 of 2" in err
    assert records(tmp_path) == {}


def test_launcher_timeout_cuts_the_rendezvous_short(tmp_path, capfd):
    port = free_port()
    argv = [*c10d("2", port), "--timeout", "1", *FAST]
    assert main([*argv, WORKER, "--out", str(tmp_path)]) == 124
    assert "timed out after 1 s (--timeout) during the rendezvous" in capfd.readouterr().err


def test_rdzv_flags_parse_like_torchrun(monkeypatch):
    config = parse_config([*c10d("1:4", 0), "x.py"])
    assert config.rdzv == RdzvSettings("127.0.0.1", 0, 1, 4)
    assert config.nnodes == 4
    config = parse_config(["--rdzv-backend", "c10d", "--rdzv-endpoint", "node0", "x.py"])
    assert (config.rdzv.host, config.rdzv.port) == ("node0", 29400)
    argv = ["--rdzv-backend=c10d", "--rdzv-conf", "is_host=0,join_timeout=5,read_timeout=9"]
    config = parse_config([*argv, "--rdzv-id", "j", "x.py"])
    assert (config.rdzv.is_host, config.rdzv.join_timeout, config.run_id) == (False, 5.0, "j")
    config = parse_config(["--nnodes", "2", "--rdzv-endpoint", "10.0.0.1:1234", "x.py"])
    assert config.rdzv is None and (config.master_addr, config.master_port) == ("10.0.0.1", 1234)
    monkeypatch.setenv("PET_RDZV_BACKEND", "c10d")
    monkeypatch.setenv("PET_RDZV_ENDPOINT", "h:7")
    monkeypatch.setenv("PET_NNODES", "2")
    config = parse_config(["x.py"])
    assert config.rdzv == RdzvSettings("h", 7, 2, 2)


def test_bad_rdzv_flags_exit_2(capsys):
    for argv in (
        ["--rdzv-backend", "etcd", "x.py"],
        ["--nnodes", "1:2", "x.py"],
        ["--nnodes", "3:2", "--rdzv-backend", "c10d", "x.py"],
        ["--rdzv-backend", "c10d", "--rdzv-endpoint", "h:port", "x.py"],
        ["--rdzv-backend", "c10d", "--rdzv-conf", "join_timeout=soon", "x.py"],
        ["--rdzv-backend", "c10d", "--rdzv-conf", "is_host", "x.py"],
    ):
        with pytest.raises(SystemExit) as exc:
            parse_config(argv)
        assert exc.value.code == 2, argv
    err = capsys.readouterr().err
    assert "--rdzv-backend etcd is not supported; use static or c10d" in err
    assert "node ranges (MIN:MAX) need --rdzv-backend c10d" in err
