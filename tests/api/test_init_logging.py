"""init_process_group("gloo") says, once, at INFO, that pyc10d's engine runs under that name."""

from __future__ import annotations

import logging

import pytest

import pyc10d as dist
from pyc10d.api.init import GLOO_ALIAS_MESSAGE

LOGGER = "pyc10d.api.init"


def _alias_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and "is an alias" in r.getMessage()]


@pytest.mark.parametrize("backend", ["gloo", "cpu:gloo", "GLOO"])
def test_gloo_logs_one_info_line(caplog, backend):
    caplog.set_level(logging.INFO, logger=LOGGER)
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert dist.get_backend() == backend.lower()  # as requested, as torch reports it
        dist.barrier()  # running collectives adds no more of it
        dist.new_group([0])
    finally:
        dist.destroy_process_group()
    records = _alias_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    assert records[0].levelno == logging.INFO
    assert records[0].getMessage() == GLOO_ALIAS_MESSAGE
    assert "pyc10d's own engine, not torch's Gloo" in GLOO_ALIAS_MESSAGE
    assert "\n" not in GLOO_ALIAS_MESSAGE


def test_default_backend_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    dist.init_process_group(store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert dist.get_backend() == "pyc10d"
    finally:
        dist.destroy_process_group()
    assert _alias_records(caplog) == []


def test_failed_init_logs_nothing(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    with pytest.raises(ValueError, match="must be given with store"):
        dist.init_process_group("gloo", store=dist.HashStore())
    assert _alias_records(caplog) == []
