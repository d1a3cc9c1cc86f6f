"""examples/torch_ddp.py and examples/torch_fsdp2.py, plain torch scripts on the "pyc10d" backend,
under both launchers at world size 2: ``pyc10d-run`` and torch's own ``torchrun``.

The scripts never import pyc10d: torch loads pyc10d's ``torch.backends`` entry point when it is
imported. Under torchrun the agent hosts the TCPStore (``TORCHELASTIC_USE_AGENT_STORE=True``);
under pyc10d-run rank 0 does. The four launches start together; one still running after its
timeout (or at the end of the module, whatever happened) is stopped with its workers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pyc10d.testing import free_port

pytestmark = pytest.mark.timeout(90)

TIMEOUT = 75  # seconds for each launch, counted from the start of all four
GRACE = 10  # seconds a launcher gets to stop its workers after SIGTERM

EXAMPLES = Path(__file__).parent.parent / "examples"
FINAL = re.compile(r"^final loss (\d+\.\d+)$", re.MULTILINE)
LOGGED = re.compile(r"^step +\d+  loss (\d+\.\d+)$", re.MULTILINE)


def launcher_command(launcher: str) -> list[str]:
    """The launcher's command line for 2 local workers on a free port."""
    if launcher == "pyc10d-run":
        return [sys.executable, "-m", "pyc10d.run", "--nproc-per-node", "2", "--timeout", "60"]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
    ]


class Launch:
    """One launcher run, with its output captured."""

    def __init__(self, command: list[str]) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1")
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        self.command = command
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.deadline = time.monotonic() + TIMEOUT
        self._result: tuple[int, str, str] | None = None

    def result(self) -> tuple[int, str, str]:
        """(exit code, stdout, stderr); on a timeout, stops the launch and fails the test."""
        if self._result is not None:
            return self._result
        try:
            out, err = self.proc.communicate(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"{self.command} timed out after {TIMEOUT} s:\n{out}\n{err[-3000:]}")
        self._result = (self.proc.returncode, out, err)
        return self._result

    def close(self) -> None:
        """Stop it if it still runs; reap the launcher and close its pipes."""
        self.kill()
        if self._result is None:
            self.proc.communicate()

    def kill(self) -> None:
        """Stop the launch if it still runs: SIGTERM to the launcher (both stop their workers on
        it), SIGKILL after a grace period, then SIGKILL to whatever it had started (each launcher
        puts its workers in sessions of their own)."""
        if self.proc.poll() is not None:
            return
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        self.proc.terminate()
        try:
            self.proc.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


SCRIPTS = {"ddp": "torch_ddp.py", "fsdp2": "torch_fsdp2.py"}
BANNERS = {"ddp": "DDP on backend 'pyc10d'", "fsdp2": "FSDP2 on backend 'pyc10d'"}
LAUNCHERS = ("pyc10d-run", "torchrun")


@pytest.fixture(scope="module")
def launches():
    """All four runs, started at once (two cores: they overlap each other's start-up)."""
    args = ["--steps", "20", "--log-every", "5"]
    runs = {
        (example, launcher): Launch([*launcher_command(launcher), str(EXAMPLES / script), *args])
        for example, script in SCRIPTS.items()
        for launcher in LAUNCHERS
    }
    yield runs
    for run in runs.values():
        run.close()


@pytest.mark.parametrize("launcher", LAUNCHERS)
@pytest.mark.parametrize("example", list(SCRIPTS))
def test_example_trains_under_launcher(launches, example, launcher):
    code, out, err = launches[(example, launcher)].result()
    assert code == 0, out + err[-3000:]
    assert f"{BANNERS[example]}, world size 2" in out
    final = FINAL.findall(out)
    assert len(final) == 1, out  # printed once, by rank 0
    logged = [float(loss) for loss in LOGGED.findall(out)]
    assert logged, out
    assert float(final[0]) < logged[0]  # it trained


@pytest.mark.parametrize("example", list(SCRIPTS))
def test_launchers_give_the_same_training(launches, example):
    finals = {}
    for launcher in LAUNCHERS:
        code, out, _ = launches[(example, launcher)].result()
        if code != 0:
            pytest.skip(f"{launcher} failed (reported by its own test)")
        finals[launcher] = FINAL.findall(out)
    assert finals["pyc10d-run"] == finals["torchrun"]  # same seeds, same world: same losses
