"""TCP mesh setup against strays: idle connections, wrong hellos, abandoned handshakes.

Setup used to read each accepted connection's hello in turn, blocking up to 5 s on a silent one,
and took a connection for a peer as soon as its hello checked out: two idle connections to a
rank's listener made a peer give up, and the socket it abandoned was later taken for it. Now
every connection is handled concurrently, with its own deadline, and taken only once the peer
confirms (ACK) after checking the acceptor's answer.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

from pyc10d.core.timeouts import Deadline
from pyc10d.store import HashStore, PrefixStore
from pyc10d.testing import spawn
from pyc10d.transport import TCPTransport
from pyc10d.transport.tcp.handshake import ACK, HELLO, MAGIC
from pyc10d.transport.tcp.setup import ADDR_KEY, NONCE_KEY

from tests.helpers.pg import make_pg
from tests.helpers.transport import Background

QUICK_S = 3.0  # "well under" the 5 s the old code spent on each idle connection


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    """These raw connections do not authenticate: run without a key (see tests/test_auth.py)."""
    monkeypatch.delenv("PYC10D_AUTH_KEY", raising=False)
    monkeypatch.delenv("PYC10D_AUTH_KEY_FILE", raising=False)


def _address(store, rank: int, seconds: float = 20.0) -> tuple[str, int]:
    """The setup listener of ``rank``, as published in ``store``."""
    store.wait([ADDR_KEY.format(rank)], seconds)
    host, _, port = store.get(ADDR_KEY.format(rank)).decode().rpartition(":")
    return host, int(port)


def _exchange(a: TCPTransport, b: TCPTransport) -> None:
    a.send(1, 7, b"from 0", Deadline(10))
    b.send(0, 7, b"from 1", Deadline(10))
    assert b.recv_bytes(0, 7, Deadline(10)) == b"from 0"
    assert a.recv_bytes(1, 7, Deadline(10)) == b"from 1"


def test_idle_and_wrong_hello_connections_do_not_delay_setup(caplog):
    caplog.set_level(logging.WARNING, logger="pyc10d.transport.tcp.handshake")
    store = HashStore()
    first = Background(TCPTransport, store, 0, 2, Deadline(30))
    addr = _address(store, 0)
    idle = [socket.create_connection(addr, timeout=10) for _ in range(2)]
    wrong = socket.create_connection(addr, timeout=10)
    wrong.sendall(HELLO.pack(MAGIC, b"\x00" * 16, 1, 2))  # rank 1 of another group
    start = time.monotonic()
    second = Background(TCPTransport, store, 1, 2, Deadline(30))
    a, b = first.result(30), second.result(30)
    elapsed = time.monotonic() - start
    try:
        assert elapsed < QUICK_S, f"setup took {elapsed:.1f}s with idle connections around"
        _exchange(a, b)
        assert wrong.recv(1) == b""  # dropped...
        where = f"127.0.0.1:{wrong.getsockname()[1]}"
        logged = [r.getMessage() for r in caplog.records]
        assert any(where in m and "not a peer of this group" in m for m in logged), logged
    finally:
        for sock in [*idle, wrong]:
            sock.close()
        a.close()
        b.close()


def test_abandoned_handshake_is_never_taken_for_the_peer():
    """A connection that says hello as rank 1, reads the answer and leaves without its ACK (a
    peer that gave up) must not become rank 1's socket: the real rank 1 connects after it."""
    store = HashStore()
    first = Background(TCPTransport, store, 0, 2, Deadline(30))
    addr = _address(store, 0)
    store.set(ADDR_KEY.format(1), "127.0.0.1:1")  # lets rank 0 start accepting before rank 1
    nonce = store.get(NONCE_KEY)
    with socket.create_connection(addr, timeout=10) as quitter:
        quitter.sendall(HELLO.pack(MAGIC, nonce, 1, 2))
        assert quitter.recv(HELLO.size) == HELLO.pack(MAGIC, nonce, 0, 2)
    second = Background(TCPTransport, store, 1, 2, Deadline(30))
    a, b = first.result(30), second.result(30)
    try:
        _exchange(a, b)  # with the old code rank 0 held the quitter's socket: this failed
    finally:
        a.close()
        b.close()


def test_ack_must_be_the_ack(caplog):
    caplog.set_level(logging.WARNING, logger="pyc10d.transport.tcp.handshake")
    store = HashStore()
    first = Background(TCPTransport, store, 0, 2, Deadline(30))
    addr = _address(store, 0)
    store.set(ADDR_KEY.format(1), "127.0.0.1:1")
    nonce = store.get(NONCE_KEY)
    with socket.create_connection(addr, timeout=10) as liar:
        liar.sendall(HELLO.pack(MAGIC, nonce, 1, 2))
        liar.recv(HELLO.size)
        liar.sendall(b"?" if ACK != b"?" else b"!")
        assert liar.recv(1) == b""
    second = Background(TCPTransport, store, 1, 2, Deadline(30))
    a, b = first.result(30), second.result(30)
    try:
        _exchange(a, b)
        assert any("instead of its ACK" in r.getMessage() for r in caplog.records)
    finally:
        a.close()
        b.close()


# -- the same in separate processes, with a process group on top --------------------------------
def idle_sockets_then_allreduce(ctx) -> float:
    import torch

    idle = []
    if ctx.rank > 0:  # before joining: two idle connections to rank 0's setup listener
        deadline = Deadline(30)
        suffix = "/" + ADDR_KEY.format(0)
        while not (found := [k for k in ctx.store.list_keys() if k.endswith(suffix)]):
            assert not deadline.expired(), "rank 0 never published its setup address"
            time.sleep(0.01)
        addr = _address(PrefixStore(found[0][: -len(suffix)], ctx.store), 0)
        idle = [socket.create_connection(addr, timeout=10) for _ in range(2)]
    start = time.monotonic()
    pg = make_pg(ctx)
    elapsed = time.monotonic() - start
    t = torch.ones(3) * (ctx.rank + 1)
    pg.allreduce([t]).wait()
    assert t.tolist() == [sum(range(1, ctx.world_size + 1))] * 3
    pg.shutdown()
    for sock in idle:
        sock.close()
    return elapsed


def test_group_forms_quickly_despite_idle_connections(monkeypatch):
    monkeypatch.setenv("PYC10D_TRANSPORT", "tcp")
    elapsed = spawn(idle_sockets_then_allreduce, 3, timeout=90)
    assert max(elapsed[1:]) < QUICK_S + 2, elapsed  # rank 0 also waited for the others to start
