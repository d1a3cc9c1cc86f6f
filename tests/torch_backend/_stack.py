"""Shared by the torch-stack tests: run a rank function on Gloo and on pyc10d, compare results.

Each test module bundles many checks into one rank function per backend (spawning is the
expensive part on a 2-core machine), then splits the comparison into one pytest test per
feature. :func:`run_both` caches the two runs per world size, so those tests share them, and
:func:`guarded` keeps a check that raises (on every rank alike) from hiding the others: its
error becomes that check's result, and only the test reading it fails.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any

import torch

from pyc10d.testing import spawn

TIMEOUT = 90


class Failed(str):
    """A check's result that is the traceback it raised, instead of a value."""


def guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or a :class:`Failed` holding its traceback if it raised."""
    try:
        return fn(*args, **kwargs)
    except Exception:
        return Failed(traceback.format_exc())


@functools.cache
def run_both(fn: Callable[..., Any], world_size: int) -> tuple[list[Any], list[Any]]:
    """Each rank's results of ``fn(ctx, "gloo")`` and of ``fn(ctx, "pyc10d")`` (own spawns)."""
    gloo = spawn(fn, world_size, args=("gloo",), timeout=TIMEOUT)
    ours = spawn(fn, world_size, args=("pyc10d",), timeout=TIMEOUT)
    return gloo, ours


def ok(value: Any, what: str) -> Any:
    """``value``, after checking it is no :class:`Failed` (else fail with its traceback)."""
    assert not isinstance(value, Failed), f"{what} raised:\n{value}"
    return value


def assert_tensors(mine: Any, theirs: Any, what: str, exact: bool = True, **tol: float) -> None:
    """Tensors (or lists of them) bit-identical, or within ``tol`` (assert_close's rtol/atol)
    when not ``exact``."""
    mine, theirs = ok(mine, what), ok(theirs, f"{what} (reference)")
    if isinstance(theirs, torch.Tensor):
        mine, theirs = [mine], [theirs]
    assert len(mine) == len(theirs), what
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        if exact:
            diff = (a.double() - b.double()).abs().max().item() if a.shape == b.shape else None
            assert a.dtype == b.dtype and torch.equal(a, b), f"{what}[{i}]: max diff {diff}"
        else:
            torch.testing.assert_close(a, b, msg=lambda m, i=i: f"{what}[{i}]: {m}", **tol)
