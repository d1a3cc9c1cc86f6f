"""The README's main job: examples/train_digits.py under pyc10d-run, two processes, one epoch."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parent.parent / "examples" / "train_digits.py"


def test_train_digits_on_two_processes(tmp_path):
    command = [
        sys.executable,
        "-m",
        "pyc10d.run",
        "--nproc-per-node",
        "2",
        "--timeout",
        "120",
        str(EXAMPLE),
        "--epochs",
        "2",
        "--out-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "training on 2 process(es)" in done.stdout
    assert "epoch   2  loss" in done.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["final_accuracy"] > 0.8  # two epochs already learn most digits
    assert (tmp_path / "checkpoint.pt").stat().st_size > 0
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_loss_plot_has_whole_epoch_ticks():
    """The x axis of the loss plot shows whole epochs only (no 2.5, 7.5)."""
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    train_digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_digits)
    for epochs in (2, 5, 20):
        fig = train_digits.loss_figure([1.0 / e for e in range(1, epochs + 1)], [0.5] * epochs)
        fig.canvas.draw()
        ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= epochs]
        assert ticks and all(float(t).is_integer() for t in ticks), (epochs, ticks)
