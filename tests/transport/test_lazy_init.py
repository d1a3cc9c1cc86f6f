"""Lazy connection setup (``PYC10D_LAZY_INIT`` / ``TORCH_GLOO_LAZY_INIT``): creating a group
connects nothing, a pair connects on first use, both ends may connect at once, and failures name
the peer within the operation's deadline.

Rank bodies are module-level functions (the ranks of ``spawn`` import this module by name); the
transport-level checks run transports inside one process, on threads.
"""

from __future__ import annotations

import socket
import threading
from datetime import timedelta

import pytest
import torch

from pyc10d.core.errors import DistBackendError, PeerFailedError, TransportTimeout
from pyc10d.core.timeouts import Deadline
from pyc10d.store import HashStore
from pyc10d.testing import spawn, world_sizes
from pyc10d.transport import TCPTransport
from pyc10d.transport.factory import make_transport
from pyc10d.transport.lazy import LAZY_ENVS, lazy_init_from_env, resolve_lazy
from pyc10d.transport.shm.lazy import LazyArena
from pyc10d.transport.tcp.setup import LAZY_ADDR_KEY

from tests.helpers.pg import make_pg

TIMEOUT = 90
ACCEPT_PREFIX = "pyc10d-tcp-accept"


def lazy_group(n: int, store=None) -> list[TCPTransport]:
    store = store if store is not None else HashStore()
    return [TCPTransport(store, r, n, Deadline(10), lazy=True) for r in range(n)]


def close_all(ts: list[TCPTransport]) -> None:
    for t in ts:
        t.close()


def acceptor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(ACCEPT_PREFIX)]


# -- the switch ---------------------------------------------------------------------------------
def test_env_switch(monkeypatch):
    for name in LAZY_ENVS:
        monkeypatch.delenv(name, raising=False)
    assert not lazy_init_from_env()
    for name in LAZY_ENVS:
        monkeypatch.setenv(name, "1")
        assert lazy_init_from_env()
        monkeypatch.setenv(name, "0")
        assert not lazy_init_from_env()
    assert resolve_lazy(True) and not resolve_lazy(False)  # an explicit option wins
    monkeypatch.setenv("TORCH_GLOO_LAZY_INIT", "maybe")
    with pytest.raises(ValueError, match="TORCH_GLOO_LAZY_INIT must be 0 or 1"):
        lazy_init_from_env()


def test_factory_follows_env(monkeypatch):
    monkeypatch.setenv("PYC10D_LAZY_INIT", "1")
    t = make_transport(HashStore(), 0, 2, Deadline(5))  # rank 1 never comes: nothing waits
    try:
        assert isinstance(t, TCPTransport) and t.connected_peers() == []
    finally:
        t.close()


# -- one process, several transports -----------------------------------------------------------
def test_creation_connects_nothing_then_only_the_pair_that_talks():
    ts = lazy_group(3)
    try:
        assert [t.connected_peers() for t in ts] == [[], [], []]
        out = bytearray(5)
        receiving = threading.Thread(target=ts[1].recv, args=(0, 7, memoryview(out), Deadline(10)))
        receiving.start()
        ts[0].send(1, 7, b"hello", Deadline(10))
        receiving.join(10)
        assert out == b"hello"
        assert [t.connected_peers() for t in ts] == [[1], [0], []]
        assert [len(t._res.conns) for t in ts] == [1, 1, 0]  # one socket per connected pair
    finally:
        close_all(ts)


def _exchange(t: TCPTransport, peers: list[int], tag: int, errors: list) -> None:
    try:
        for peer in peers:
            t.send(peer, tag, bytes([t.rank]) * 8, Deadline(20))
        for peer in peers:
            out = bytearray(8)
            t.recv(peer, tag, memoryview(out), Deadline(20))
            assert out == bytes([peer]) * 8
    except BaseException as exc:  # reported by the test thread
        errors.append(exc)


@pytest.mark.parametrize("n", [2, 3])
def test_both_ends_connect_at_once(n):
    """Every rank sends to every other at the same moment, from two threads each: each pair ends
    with exactly one connection and every message arrives."""
    for _ in range(40):
        ts = lazy_group(n)
        errors: list = []
        try:
            threads = [
                threading.Thread(
                    target=_exchange, args=(t, [p for p in range(n) if p != t.rank], tag, errors)
                )
                for t in ts
                for tag in (1, 2)
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join(30)
            assert not errors, errors
            for t in ts:
                assert t.connected_peers() == [p for p in range(n) if p != t.rank]
                assert len(t._res.conns) == n - 1
        finally:
            close_all(ts)


def test_close_stops_the_acceptor():
    before = set(acceptor_threads())
    ts = lazy_group(2)
    started = [t for t in acceptor_threads() if t not in before]
    assert len(started) == 2
    close_all(ts)
    assert not any(t.is_alive() for t in started)


def test_peer_that_never_created_the_group_times_out_naming_it():
    t = TCPTransport(HashStore(), 0, 2, Deadline(5), lazy=True)
    try:
        with pytest.raises(TransportTimeout, match="rank 1 to publish its address") as info:
            t.send(1, 3, b"x", Deadline(0.3))
        assert info.value.ranks == (1,)
    finally:
        t.close()


def test_peer_that_never_answers_times_out_naming_it():
    store = HashStore()
    silent = socket.create_server(("127.0.0.1", 0))  # listens, never answers a HELLO
    try:
        port = silent.getsockname()[1]
        store.set(LAZY_ADDR_KEY.format(1), f"{bytes(16).hex()} 127.0.0.1:{port}")
        t = TCPTransport(store, 0, 2, Deadline(5), lazy=True)
        try:
            with pytest.raises(TransportTimeout, match="rank 1 to accept a connection") as info:
                t.send(1, 3, b"x", Deadline(0.5))
            assert info.value.ranks == (1,)
            assert t.error is None  # a timeout leaves the transport usable
        finally:
            t.close()
    finally:
        silent.close()


def test_peer_gone_fails_fast_naming_it():
    store = HashStore()
    ts = lazy_group(2, store)
    ts[1].close()  # its listener is gone, as when its process exits
    try:
        with pytest.raises(PeerFailedError, match="rank 1") as info:
            ts[0].send(1, 3, b"x", Deadline(30))
        assert info.value.peer == 1
        with pytest.raises(PeerFailedError, match="rank 1"):  # later: at once, no new attempt
            ts[0].recv(1, 3, memoryview(bytearray(1)), Deadline(30))
    finally:
        ts[0].close()


def test_close_wakes_a_thread_waiting_to_connect():
    ts = lazy_group(2)
    mesh = ts[0]._mesh
    with mesh._cond:
        mesh._answered.add(1)  # as if rank 1's HELLO was answered: a sender waits for its ACK
    errors: list = []

    def send() -> None:
        try:
            ts[0].send(1, 3, b"x", Deadline(60))
        except DistBackendError as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    with mesh._cond:
        while not mesh._cond._waiters:  # white-box: the sender is waiting
            mesh._cond.wait(0.01)
    ts[0].close()
    sender.join(10)
    assert not sender.is_alive() and errors and "closed" in str(errors[0])
    ts[1].close()


# -- process groups -----------------------------------------------------------------------------
def store_barrier(ctx, name: str) -> None:
    """Wait (through the harness's store, not the group) until every rank got here."""
    ctx.store.set(f"{name}/{ctx.rank}", "1")
    ctx.store.wait([f"{name}/{r}" for r in range(ctx.world_size)], timedelta(seconds=30))


def p2p_connects_only_the_pair(ctx):
    pg = make_pg(ctx)
    t = pg._transport
    assert t.connected_peers() == []
    arena = pg._arena
    assert arena is None or (isinstance(arena, LazyArena) and not arena.built)
    store_barrier(ctx, "created")
    if ctx.rank == 0:
        pg.send([torch.arange(4.0)], 1, 0).wait()
    elif ctx.rank == 1:
        got = torch.zeros(4)
        pg.recv([got], 0, 0).wait()
        assert torch.equal(got, torch.arange(4.0))
    store_barrier(ctx, "p2p_done")
    expected = {0: [1], 1: [0]}.get(ctx.rank, [])
    assert t.connected_peers() == expected, t.connected_peers()
    store_barrier(ctx, "checked")  # nobody connects before everyone has checked
    x = torch.ones(3) * (ctx.rank + 1)
    pg.allreduce([x]).wait()
    assert torch.equal(x, torch.ones(3) * sum(range(1, ctx.world_size + 1)))
    if arena is not None:
        assert arena.built  # the first collective attached it
    pg.shutdown()


@world_sizes(3)
@pytest.mark.both_transports
def test_p2p_connects_only_the_pair(world_size, monkeypatch):
    monkeypatch.setenv("PYC10D_LAZY_INIT", "1")
    spawn(p2p_connects_only_the_pair, world_size, timeout=TIMEOUT)


def torch_variable_makes_it_lazy(ctx):
    pg = make_pg(ctx)
    assert pg._transport.connected_peers() == []
    store_barrier(ctx, "created")  # nobody connects before everyone has checked
    x = torch.tensor([float(ctx.rank)])
    pg.allreduce([x]).wait()
    assert x.item() == sum(range(ctx.world_size))
    pg.shutdown()


@world_sizes(2)
@pytest.mark.both_transports
def test_torch_variable_makes_it_lazy(world_size):
    spawn(
        torch_variable_makes_it_lazy,
        world_size,
        timeout=TIMEOUT,
        env={"TORCH_GLOO_LAZY_INIT": "1"},
    )


def simultaneous_p2p(ctx):
    """Every rank isends to every other at once (both ends of each pair connect together)."""
    pg = make_pg(ctx, threads=4)
    n, me = ctx.world_size, ctx.rank
    peers = [p for p in range(n) if p != me]
    outs = {p: torch.zeros(1000) for p in peers}
    works = [pg.send([torch.full((1000,), float(me))], p, 5) for p in peers]
    works += [pg.recv([outs[p]], p, 5) for p in peers]
    for w in works:
        w.wait()
    for p in peers:
        assert torch.equal(outs[p], torch.full((1000,), float(p)))
    assert pg._transport.connected_peers() == peers
    assert len(pg._transport._res.conns) == n - 1
    pg.shutdown()


@world_sizes(2, 3)
@pytest.mark.both_transports
def test_simultaneous_p2p(world_size, monkeypatch):
    monkeypatch.setenv("PYC10D_LAZY_INIT", "1")
    spawn(simultaneous_p2p, world_size, timeout=TIMEOUT)


def dead_peer_named(ctx):
    pg = make_pg(ctx, timeout=60)
    victim = ctx.world_size - 1
    if ctx.rank == victim:
        pg.shutdown()  # leaves before anyone connected to it: its listener is gone
        ctx.store.set("victim_gone", "1")
        return "left"
    ctx.store.wait(["victim_gone"], timedelta(seconds=30))
    with pytest.raises(RuntimeError, match=f"rank {victim}"):
        pg.send([torch.ones(1)], victim, 0).wait()
    with pytest.raises(RuntimeError, match=f"rank {victim}"):
        pg.recv([torch.ones(1)], victim, 0).wait()
    pg.shutdown()
    return "survived"


@world_sizes(2, 3)
@pytest.mark.both_transports
def test_dead_peer_fails_ops_naming_it(world_size, monkeypatch):
    monkeypatch.setenv("PYC10D_LAZY_INIT", "1")
    results = spawn(dead_peer_named, world_size, timeout=TIMEOUT)
    assert results == ["survived"] * (world_size - 1) + ["left"]
