"""Shared pytest setup: make the checkout's ``pyc10d`` importable, here and in spawned ranks.

Ranks started by :func:`pyc10d.testing.spawn` import their rank function by module name with the
parent's ``sys.path``; pytest's default ``prepend`` import mode puts this ``tests/`` directory on
it (so ``test_*`` modules import as top-level modules), and the line below adds the repository
root, so that plain ``pytest`` works as well as ``python -m pytest`` without installing pyc10d.
"""

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
