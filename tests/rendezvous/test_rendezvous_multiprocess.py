"""rendezvous() across processes: tcp://, env:// and file:// give every rank one shared store."""

from __future__ import annotations

from datetime import timedelta

import pytest

import pyc10d
from pyc10d.testing import spawn, world_sizes


def rendezvous_and_exchange(ctx, scheme: str) -> bytes:
    if scheme == "env":
        url = "env://"
    elif scheme == "tcp":
        url = f"tcp://127.0.0.1:{ctx.store.get('port').decode()}"
    else:
        url = ctx.init_method
    kwargs = {} if scheme == "env" else {"rank": ctx.rank, "world_size": ctx.world_size}
    store, rank, size = next(pyc10d.rendezvous(url, timeout=timedelta(seconds=30), **kwargs))
    assert (rank, size) == (ctx.rank, ctx.world_size)
    store.set(f"hello/{rank}", f"from {rank}")
    value = store.get(f"hello/{(rank + 1) % size}")
    leave_store_host_last(store, rank, size)
    return value


def leave_store_host_last(store, rank: int, size: int) -> None:
    """With tcp:// or env://, rank 0's process hosts the store: it must exit after everyone's
    last request was served (a request still unread when it exits is reset, not answered)."""
    if rank == 0:
        store.wait([f"done/{r}" for r in range(1, size)], timedelta(seconds=30))
    else:
        store.set(f"done/{rank}", b"1")  # this rank's last request to the store


@world_sizes(2, 3)
@pytest.mark.parametrize("scheme", ["tcp", "env", "file"])
def test_rendezvous_schemes_across_processes(world_size, scheme):
    if scheme == "tcp":
        results = spawn(_tcp_rendezvous_with_port, world_size, args=(scheme,), timeout=60)
    else:
        results = spawn(rendezvous_and_exchange, world_size, args=(scheme,), timeout=60)
    assert results == [f"from {(r + 1) % world_size}".encode() for r in range(world_size)]


def _tcp_rendezvous_with_port(ctx, scheme: str) -> bytes:
    if ctx.rank == 0:
        ctx.store.set("port", str(pyc10d.testing.free_port()))
    return rendezvous_and_exchange(ctx, scheme)
