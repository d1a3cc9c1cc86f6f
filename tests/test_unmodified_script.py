"""The same torch.distributed script gives the same results under torch and under pyc10d."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyc10d.testing import free_port

SCRIPT = Path(__file__).parent / "scripts" / "torch_style_script.py"


def run_script(module: str, world_size: int, tmp_path: Path) -> list[dict]:
    """Start ``world_size`` processes of the script with env:// variables; return their JSON."""
    port = free_port()
    procs, outputs = [], []
    for rank in range(world_size):
        out = tmp_path / f"{module}-{rank}.json"
        env = dict(
            os.environ,
            DIST_MODULE=module,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(SCRIPT), str(out)], env=env, stderr=subprocess.PIPE, text=True
            )
        )
        outputs.append(out)
    try:
        for rank, proc in enumerate(procs):
            _, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, f"{module} rank {rank} failed:\n{err}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [json.loads(path.read_text()) for path in outputs]


@pytest.mark.parametrize("world_size", [2, 3])
def test_same_script_same_results(world_size, tmp_path):
    ours = run_script("pyc10d", world_size, tmp_path)
    theirs = run_script("torch.distributed", world_size, tmp_path)
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.keys() == reference.keys()
        for key in mine:
            if key == "grads":
                for a, b in zip(mine[key], reference[key], strict=True):
                    assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
            else:
                assert mine[key] == reference[key], key
