"""Helpers shared by the ProcessGroup tests (imported by the ranks too, as ``tests.helpers.pg``)."""

from __future__ import annotations

from datetime import timedelta

from pyc10d import ProcessGroup


def make_pg(ctx, threads: int = 2, timeout: float = 30.0) -> ProcessGroup:
    """This rank's group over the harness's store, with ``threads`` workers and ``timeout`` s."""
    options = ProcessGroup.Options()
    options._timeout = timedelta(seconds=timeout)
    options.threads = threads
    return ProcessGroup(ctx.store, ctx.rank, ctx.world_size, options)


def value_of(work):
    """Wait for ``work`` through its future and return the future's value."""
    fut = work.get_future()
    fut.wait()
    return fut.value()


def opts_of(cls, **fields):
    """An options object of ``cls`` with ``fields`` set."""
    opts = cls()
    for name, value in fields.items():
        setattr(opts, name, value)
    return opts
