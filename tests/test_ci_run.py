"""`.ci/run` runs the README's test command in a venv of its own, never the working copy's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FAKE_README = """# a project

<!-- test-command -->
```bash
python3 -m venv --without-pip .venv && .venv/bin/python -c "import sys; print(sys.prefix)"
```
"""


def test_ci_run_leaves_the_working_copy_venv_alone(tmp_path: Path) -> None:
    """A `.venv` already in the checkout survives, and the command ran in another venv."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(REPO / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "README.md").write_text(FAKE_README)
    marker = tmp_path / ".venv" / "mine"
    marker.parent.mkdir()
    marker.write_text("the developer's environment")
    result = subprocess.run(
        ["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "the developer's environment"
    prefix = Path(result.stdout.strip().splitlines()[-1])
    assert prefix.name == "venv" and tmp_path not in prefix.parents
    assert not prefix.exists(), "CI's temporary venv is removed on exit"
