"""Helpers for DDP tests that run torch's own DDP on a torch Gloo group next to pyc10d's DDP, in
the same rank processes, and compare the two.

Not a test module (no ``test_`` prefix); rank functions import it by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from tests.helpers.ddp import finish_both, init_both  # noqa: F401 (used through this module)


class _NoEvent:
    def record(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait(self, *args: Any, **kwargs: Any) -> None:
        pass


class _NoStream:
    def wait_stream(self, *args: Any) -> None:
        pass


def stub_accelerator_sync() -> None:
    """Let torch's DDP mixed precision and in-backward optimizers run on CPU.

    Both order their work with an accelerator's events and streams (``torch.Event().record()``,
    ``torch.accelerator.current_stream().wait_stream``), which raise on a CPU-only machine
    ("cpu backend doesn't support events", "Cannot access accelerator device"). CPU ops run in
    program order, so replacing those calls with no-ops changes nothing else. Rank processes only.
    """
    torch.Event = _NoEvent  # type: ignore[misc,assignment]
    torch.accelerator.current_stream = lambda *args, **kwargs: _NoStream()  # type: ignore[assignment]


def copy_params(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """``dst``'s parameters take ``src``'s values (cast to ``dst``'s dtypes), in place."""
    with torch.no_grad():
        for d, s in zip(dst.parameters(), src.parameters(), strict=True):
            d.copy_(s)


def assert_close_all(
    ours: Iterable[torch.Tensor | None],
    theirs: Iterable[torch.Tensor | None],
    what: str,
    tol: float = 1e-5,
) -> None:
    """Pairwise ``assert_close`` (None must match None), float32 comparison."""
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert (a is None) == (b is None), f"{what}[{i}]: {a} vs {b}"
        if a is not None:
            torch.testing.assert_close(
                a.float(), b.float(), rtol=tol, atol=tol, msg=lambda m, i=i: f"{what}[{i}]: {m}"
            )
