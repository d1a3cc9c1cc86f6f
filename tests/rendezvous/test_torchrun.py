"""pyc10d scripts under torchrun: its agent hosts the store, and env:// joins it as a client.

torchrun sets ``TORCHELASTIC_USE_AGENT_STORE=True`` with MASTER_ADDR/MASTER_PORT pointing at
the store its agent already serves; hosting another one there fails with EADDRINUSE.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pyc10d.rendezvous import uses_agent_store

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "allreduce_ranks.py"


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", *args, str(SCRIPT)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


C10D_RDZV = ["--nnodes", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]


# each world size and each rendezvous style once (a torchrun start costs ~7 s here)
@pytest.mark.parametrize(
    ("world_size", "rdzv"), [(2, []), (3, C10D_RDZV)], ids=["static-2", "c10d-rdzv-3"]
)
def test_pyc10d_script_under_torchrun(world_size, rdzv):
    """Every rank joins the agent's store and the allreduce sums all ranks."""
    done = _torchrun("--nproc-per-node", str(world_size), *rdzv)
    assert done.returncode == 0, done.stderr[-3000:]
    total = world_size * (world_size + 1) / 2
    # ranks share one stdout pipe, so lines may interleave: find each report wherever it is
    lines = sorted(re.findall(r"rank \d+/\d+ sum [\d.]+", done.stdout))
    assert lines == [f"rank {r}/{world_size} sum {total}" for r in range(world_size)]


def test_agent_store_flag(monkeypatch):
    """Only torchrun's exact value ("True") means the agent hosts the store."""
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    assert uses_agent_store()
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert not uses_agent_store()
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE")
    assert not uses_agent_store()
