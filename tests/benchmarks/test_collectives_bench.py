"""benchmarks/collectives_bench.py and benchmarks/latency_profile.py: their pure helpers, the
MPICH skip, and a tiny end-to-end run of each (fresh rank processes; no timing is asserted)."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import collectives_bench as bench  # noqa: E402
from _collectives_rank import element_counts  # noqa: E402


def test_rounds_rotate_the_backends():
    backends = ["pyc10d", "gloo", "mpich"]
    orders = [bench.rotation(backends, i) for i in range(4)]
    assert orders == [
        ["pyc10d", "gloo", "mpich"],
        ["gloo", "mpich", "pyc10d"],
        ["mpich", "pyc10d", "gloo"],
        ["pyc10d", "gloo", "mpich"],
    ]


def test_element_counts_are_multiples_of_the_world():
    assert element_counts(4, 2) == (2, 1)  # at least one element per rank
    assert element_counts(64 << 20, 4) == (16 << 20, 4 << 20)
    assert element_counts(1024, 3) == (255, 85)


def test_bus_factors_follow_nccl_tests():
    assert bench.bus_factor("allreduce", 4) == bench.bus_factor("allreduce_async", 4) == 1.5
    assert bench.bus_factor("broadcast", 4) == 1.0
    assert bench.bus_factor("alltoall", 4) == 0.75


def test_mpich_column_skipped_without_mpi4py(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mpi4py" else real(name, *a)
    )
    skip, library = bench.mpi_status()
    assert "mpi4py is not installed" in skip and library == ""


def test_mpich_column_skipped_without_mpiexec(monkeypatch):
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py not installed: the earlier check answers first")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    skip, _ = bench.mpi_status()
    assert "no mpiexec" in skip


def _fake(times: dict) -> dict:
    return {"times": times}


def test_table_pairs_ratios_by_round_and_marks_missing_cells():
    rounds = {
        "pyc10d": [_fake({"allreduce:4": 1e-5}), _fake({"allreduce:4": 2e-5})],
        "gloo": [_fake({"allreduce:4": 4e-5}), _fake({"allreduce:4": 4e-5})],
        "mpich": [_fake({"allreduce:4": 1e-6}), None],  # its second job failed
    }
    lines = bench.table(rounds, 2, ["allreduce", "allreduce_async"], [4])
    row = next(line for line in lines if line.startswith("| allreduce | 4 B"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # µs: median over rounds; speedups: per-round ratios (4x, 2x -> 3x; MPICH: round 1 only)
    assert cells[2:5] == ["15.0", "40.0", "1.0"]
    assert cells[-2:] == ["3.00x", "0.10x"]
    async_row = next(line for line in lines if line.startswith("| allreduce_async"))
    assert async_row.count("—") == 8  # nothing measured for it here


@pytest.mark.timeout(600)
def test_quick_run_writes_table_and_plot(tmp_path):
    output = tmp_path / "collectives.md"
    command = [sys.executable, str(BENCHMARKS / "collectives_bench.py"), "--quick", "--no-mpich"]
    command += ["--worlds", "2", "3", "--sizes", "4", "--ops", "allreduce", "allreduce_async"]
    command += ["--repeats", "1", "--budget", "0.002"]
    command += ["--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = output.read_text()
    assert "MPICH column skipped: --no-mpich given" in text
    for world in (2, 3):
        assert f"### world {world}" in text
    assert text.count("| allreduce_async | 4 B | ") == 2
    assert "FAILED" not in done.stderr
    if importlib.util.find_spec("matplotlib") is not None:
        assert output.with_suffix(".png").stat().st_size > 0


@pytest.mark.timeout(600)
def test_latency_profile_runs_every_layer(tmp_path):
    command = [sys.executable, str(BENCHMARKS / "latency_profile.py"), "--calls", "20"]
    command += ["--blocks", "1", "--output", str(tmp_path / "profile.md")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "profile.md").read_text()
    assert "| `dist.all_reduce(t)` | " in text
    assert "counter exchange" in text  # the arena layers ran (one host: the arena is there)
    assert "cProfile" in text
