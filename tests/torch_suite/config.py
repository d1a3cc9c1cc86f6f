"""The environment torch's ``distributed_test.py`` reads, set for one backend (no torch import).

``distributed_test.py`` reads ``BACKEND`` and ``WORLD_SIZE`` when it is imported (its skip
decorators are evaluated then), and torch's harness writes ``TEMP_DIR``, ``INIT_METHOD`` and
``MASTER_ADDR`` into ``os.environ`` while it runs. :func:`suite_environment` sets the first two and
puts the whole environment back afterwards, so that a pytest session's other tests see none of it.
The ranks torch's harness spawns inherit the environment of the moment they start.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

BACKENDS = ("pyc10d", "gloo")
"""The backends the runner accepts: pyc10d, and Gloo for comparison."""

DEFAULT_WORLD_SIZE = 2
"""Ranks per test (the brief's WORLD_SIZE=2; ``distributed_test.py`` needs at least 2)."""

BODY_AS_VARIABLE = "TORCH_SUITE_BODY_AS"
"""Names the backend the test bodies see as ``BACKEND`` in the ranks (see ``suite.BODY_AS``)."""


@contextmanager
def suite_environment(
    backend: str, world_size: int = DEFAULT_WORLD_SIZE, body_as: str | None = None
) -> Iterator[None]:
    """Within the block, ``BACKEND`` and ``WORLD_SIZE`` name the suite's backend and world size,
    and ``body_as`` (if given) the backend name the test bodies see in the ranks.

    On exit every variable is restored, including those torch's harness set meanwhile.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if world_size < 2:
        raise ValueError(f"distributed_test.py needs WORLD_SIZE >= 2, got {world_size}")
    saved = dict(os.environ)
    os.environ["BACKEND"] = backend
    os.environ["WORLD_SIZE"] = str(world_size)
    if body_as is not None:
        os.environ[BODY_AS_VARIABLE] = body_as
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
