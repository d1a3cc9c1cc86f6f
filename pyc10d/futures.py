"""Futures, as in ``torch.futures``: a Work's ``get_future()`` is a ``torch.futures.Future``."""

from __future__ import annotations

from torch.futures import Future, collect_all, wait_all

__all__ = ["Future", "collect_all", "wait_all"]
