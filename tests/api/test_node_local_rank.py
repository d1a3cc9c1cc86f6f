"""get_node_local_rank: LOCAL_RANK, else the fallback, else torch's RuntimeError (torch's
``LocalRankTest``)."""

from __future__ import annotations

import pytest
import torch.distributed as torch_dist

import pyc10d as dist


def test_node_local_rank_from_environment(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert dist.get_node_local_rank() == 3
    assert dist.get_node_local_rank(fallback_rank=5) == 3  # the environment wins


def test_node_local_rank_fallback(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert dist.get_node_local_rank(fallback_rank=5) == 5
    assert dist.get_node_local_rank(fallback_rank=0) == 0  # 0 is a rank, not "no fallback"


def test_node_local_rank_missing_is_torchs_error(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(RuntimeError) as ours:
        dist.get_node_local_rank()
    with pytest.raises(RuntimeError) as theirs:
        torch_dist.get_node_local_rank()
    assert type(ours.value) is type(theirs.value)
    assert str(ours.value) == str(theirs.value)
    assert str(ours.value).startswith("LOCAL_RANK is not in the environment.")
