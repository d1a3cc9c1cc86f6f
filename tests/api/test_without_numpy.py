"""pyc10d's API works where numpy is not installed (torch does not require it; pyc10d neither)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyc10d.testing import free_port

RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    try:
        import numpy  # noqa: F401
        sys.exit("numpy is importable: the test's shadow package did not take effect")
    except ImportError:
        pass
    import torch
    import pyc10d as dist

    dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "word": "x" * rank})
    dist.set_debug_level(dist.DebugLevel.DETAIL)
    try:  # a mismatch makes the DETAIL check decode the other ranks' descriptions
        if rank == 0:
            dist.all_reduce(torch.ones(2))
        else:
            dist.broadcast(torch.ones(2), src=0)
        mismatch = ""
    except RuntimeError as error:
        mismatch = str(error)
    dist.destroy_process_group()
    print(json.dumps({"gathered": gathered, "mismatch": mismatch}))
    """
)


def _shadow_numpy(tmp_path: Path) -> Path:
    """A directory holding a ``numpy`` package whose import fails, as if numpy were absent."""
    package = tmp_path / "no_numpy" / "numpy"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'numpy' (test)\", name='numpy')\n"
    )
    return package.parent


@pytest.mark.parametrize("world_size", [2, 3])
def test_objects_and_detail_checks_need_no_numpy(world_size: int, tmp_path: Path) -> None:
    """all_gather_object and the DETAIL mismatch report work with numpy unimportable."""
    shadow = _shadow_numpy(tmp_path)
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(shadow), os.environ.get("PYTHONPATH", "")]),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world_size),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RANK_SCRIPT],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    try:
        for rank, proc in enumerate(procs):
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"rank {rank} failed:\n{err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            proc.kill()
    expected = [{"rank": r, "word": "x" * r} for r in range(world_size)]
    for result in results:
        assert result["gathered"] == expected
        assert "Detected mismatch between collectives" in result["mismatch"]
