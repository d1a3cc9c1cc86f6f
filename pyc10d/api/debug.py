"""Debug levels (OFF, INFO, DETAIL) and DETAIL's cross-rank consistency check of collectives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__: list[str] = []


def check_before_collective(pg: Any, op_name: str, tensors: Sequence[torch.Tensor]) -> None:
    """In DETAIL mode, verify across ``pg``'s ranks that they all run ``op_name`` on tensors of
    the same dtypes and shapes; raise on every rank, naming the ranks and what differs."""
