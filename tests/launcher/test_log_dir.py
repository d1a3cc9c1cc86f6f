"""``pyc10d-run --log-dir/--redirects/--tee``: torchrun's per-rank log files.

The launcher runs in this process (``pyc10d.run.main``); its workers are fresh interpreters
that import no torch (but ``launch_record.py``), so they start fast.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from pyc10d.launcher.logs import LogFiles, LogSpec, Std, parse_std
from pyc10d.launcher.output import StreamPump
from pyc10d.run import main, parse_config

pytestmark = pytest.mark.timeout(60)

SCRIPTS = Path(__file__).parent / "scripts"
WORKER = str(SCRIPTS / "launch_worker.py")
FAST = ["--monitor-interval", "0.05", "--shutdown-timeout", "2"]


def only_run_dir(log_dir: Path, run_id: str) -> Path:
    """The single ``<run_id>_<random>`` directory the launcher made in ``log_dir``."""
    found = list(log_dir.iterdir())
    assert len(found) == 1 and found[0].name.startswith(f"{run_id}_"), found
    return found[0]


def files_of(run_dir: Path) -> dict[str, str]:
    """``{"attempt_0/1/stdout.log": text, ...}`` for every file under ``run_dir``."""
    return {
        str(path.relative_to(run_dir)): path.read_text()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def test_log_dir_alone_tees_both_streams_in_torchruns_layout(tmp_path, out, capfd):
    logs = tmp_path / "logs"
    argv = ["--nproc-per-node", "2", "--log-dir", str(logs), "--rdzv-id", "job7", *FAST]
    assert main([*argv, WORKER, "--out", str(out), "--say", "hello"]) == 0
    run_dir = only_run_dir(logs, "job7")
    assert files_of(run_dir) == {
        "attempt_0/0/stderr.log": "",
        "attempt_0/0/stdout.log": "hello 0\n",
        "attempt_0/1/stderr.log": "",
        "attempt_0/1/stdout.log": "hello 1\n",
    }
    console = capfd.readouterr()
    assert sorted(line for line in console.out.splitlines() if "hello" in line) == [
        "hello 0",
        "hello 1",
    ]
    assert f"pyc10d-run: worker logs in {run_dir}" in console.err


def test_redirects_without_log_dir_go_to_a_temporary_directory(tmp_path, out, capfd, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    argv = ["--nproc-per-node", "2", "-r", "3", *FAST, WORKER, "--out", str(out)]
    assert main([*argv, "--say", "quiet", "--fail-first-attempt-rank", "1"]) == 1
    console = capfd.readouterr()
    assert "quiet" not in console.out  # redirected: in the files only
    assert "fails on its first attempt" in console.err  # ... but the failure report quotes it
    (base,) = tmp_path.glob("pyc10d-run_*")
    run_dir = only_run_dir(base, "none")
    assert files_of(run_dir) == {
        "attempt_0/0/stderr.log": "",
        "attempt_0/0/stdout.log": "quiet 0\n",
        "attempt_0/1/stderr.log": "rank 1 fails on its first attempt\n",
        "attempt_0/1/stdout.log": "quiet 1\n",
    }
    assert f"worker logs in {run_dir}" in console.err


def test_per_rank_redirects_and_tee(tmp_path, out, capfd):
    """Rank 0's stdout to its file only; rank 1's stderr to its file and the console; the
    other streams to the console only, with no file."""
    logs = tmp_path / "logs"
    argv = ["--nproc-per-node", "2", "--log-dir", str(logs), "--redirects", "0:1", "--tee", "1:2"]
    script = [WORKER, "--out", str(out), "--say", "hi", "--fail-first-attempt-rank", "1"]
    assert main([*argv, "--max-restarts", "1", *FAST, *script]) == 0
    run_dir = only_run_dir(logs, "none")
    assert files_of(run_dir) == {
        "attempt_0/0/stdout.log": "hi 0\n",
        "attempt_0/1/stderr.log": "rank 1 fails on its first attempt\n",
        "attempt_1/0/stdout.log": "hi 0\n",
        "attempt_1/1/stderr.log": "",
    }
    console = capfd.readouterr()
    assert [line for line in console.out.splitlines() if "hi" in line] == ["hi 1", "hi 1"]
    assert "rank 1 fails on its first attempt" in console.err


def test_local_ranks_filter_keeps_the_files(tmp_path, out, capfd):
    logs = tmp_path / "logs"
    argv = ["--nproc-per-node", "2", "--log-dir", str(logs), "--local-ranks-filter", "1", *FAST]
    assert main([*argv, WORKER, "--out", str(out), "--say", "hey"]) == 0
    files = files_of(only_run_dir(logs, "none"))
    assert files["attempt_0/0/stdout.log"] == "hey 0\n"
    assert files["attempt_0/1/stdout.log"] == "hey 1\n"
    assert [line for line in capfd.readouterr().out.splitlines() if "hey" in line] == ["hey 1"]


def test_record_error_file_in_the_report(tmp_path, capfd):
    logs = tmp_path / "logs"
    script = str(SCRIPTS / "launch_record.py")
    assert main(["--nproc-per-node", "2", "--log-dir", str(logs), *FAST, script]) == 1
    run_dir = only_run_dir(logs, "none")
    error_file = run_dir / "attempt_0" / "1" / "error.json"
    assert error_file.is_file()
    assert not (run_dir / "attempt_0" / "0" / "error.json").exists()
    console = capfd.readouterr()
    assert f"error file of rank 1: {error_file}" in console.out
    report = console.err[console.err.index("launch_record.py FAILED") :]
    assert f"error_file: {error_file}" in report
    assert "traceback : Traceback (most recent call last):" in report
    assert "ValueError: recorded failure of rank 1" in report


def test_log_flags_parse_like_torchrun(tmp_path, monkeypatch):
    assert parse_config(["x.py"]).logs is None
    assert parse_config(["-r", "0", "-t", "0", "x.py"]).logs is None
    spec = parse_config(["--log-dir", str(tmp_path), "x.py"]).logs
    assert spec == LogSpec(str(tmp_path), Std.NONE, Std.ALL)
    spec = parse_config(["--redirects", "0:1,1:3", "--tee", "2", "x.py"]).logs
    assert spec == LogSpec(None, {0: Std.OUT, 1: Std.ALL}, Std.ERR)
    monkeypatch.setenv("PET_LOG_DIR", str(tmp_path))
    monkeypatch.setenv("PET_REDIRECTS", "1")
    assert parse_config(["x.py"]).logs == LogSpec(str(tmp_path), Std.OUT, Std.NONE)
    assert parse_std("0:2") == {0: Std.ERR}


def test_bad_log_flags_exit_2(tmp_path, capsys):
    a_file = tmp_path / "f"
    a_file.write_text("")
    for argv in (["-r", "4", "x.py"], ["--tee", "0:5", "x.py"], ["--log-dir", str(a_file), "x.py"]):
        with pytest.raises(SystemExit) as exc:
            parse_config(argv)
        assert exc.value.code == 2, argv
    err = capsys.readouterr().err
    assert "--redirects must be 0-3 or a map like 0:1,1:3" in err
    assert "is a file" in err


def test_each_attempt_starts_afresh(tmp_path):
    files = LogFiles(LogSpec(str(tmp_path), Std.NONE, Std.ALL), "r")
    first = files.attempt(0, 1)[0]
    first.stdout.write_text("old")
    again = files.attempt(0, 1)[0]
    assert again.directory == first.directory and not again.stdout.exists()
    assert files.attempt(1, 1)[0].directory.parent.name == "attempt_1"


def test_pump_copies_raw_bytes_to_its_log_and_closes_it(tmp_path):
    read_fd, write_fd = os.pipe()
    log_path = tmp_path / "stdout.log"
    log = open(log_path, "wb")  # noqa: SIM115 (the pump closes it)
    pump = StreamPump(os.fdopen(read_fd, "rb", buffering=0), None, b"[rank 0]: ", log=log)
    pump.start()
    for piece in (b"a", b"b\n", b"10%\r", b"end"):
        os.write(write_fd, piece)
    os.close(write_fd)
    pump.join(10)
    assert not pump.is_alive() and log.closed
    assert log_path.read_bytes() == b"ab\n10%\rend"  # no prefix in the file
    assert pump.tail()[-1].endswith("end")
