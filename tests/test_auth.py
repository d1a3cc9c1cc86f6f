"""Shared-key authentication (``PYC10D_AUTH_KEY``): the TCPStore, the TCP mesh, whole jobs.

With the key on every process everything works as without it; a process without the key, or
with another one, can neither use the store nor join the mesh (its connection is logged and
dropped, it gets an error naming authentication) and the job goes on; a key on one side only is
a clear error at once, not a hang.
"""

from __future__ import annotations

import logging
import multiprocessing.forkserver
import socket
import time

import pytest

from pyc10d import DistBackendError, DistNetworkError, DistStoreError, TCPStore
from pyc10d.core.auth import AuthenticationError
from pyc10d.core.timeouts import Deadline
from pyc10d.store import HashStore, PrefixStore
from pyc10d.testing import spawn
from pyc10d.transport import TCPTransport
from pyc10d.transport.shm.setup import descriptor_note, descriptor_sender
from pyc10d.transport.tcp.handshake import Identity, shake_hands
from pyc10d.transport.tcp.setup import ADDR_KEY, NONCE_KEY

from tests.helpers.pg import make_pg
from tests.helpers.transport import Background

KEY = "the-job-key-0123456789"
STORE_LOG = "pyc10d.store.tcp.server"
MESH_LOG = "pyc10d.transport.tcp.handshake"


@pytest.fixture
def keyed(monkeypatch):
    monkeypatch.setenv("PYC10D_AUTH_KEY", KEY)
    monkeypatch.delenv("PYC10D_AUTH_KEY_FILE", raising=False)
    return monkeypatch


@pytest.fixture
def master(keyed):
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=10)
    yield store
    store.close()


def _client(master: TCPStore, **kwargs) -> TCPStore:
    return TCPStore("127.0.0.1", master.port, timeout=10, **kwargs)


def _logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


# -- the store ----------------------------------------------------------------------------------
def test_store_with_the_key_everywhere_works(master, keyed, tmp_path):
    assert master._resources.server.authenticates
    with _client(master) as client:
        client.set("a", "1")
        assert master.get("a") == b"1"
        assert client.multi_get(["a"]) == [b"1"]
        assert client.add("n", 2) == 2
    (tmp_path / "key").write_text(KEY + "\n")
    keyed.delenv("PYC10D_AUTH_KEY")
    keyed.setenv("PYC10D_AUTH_KEY_FILE", str(tmp_path / "key"))
    with _client(master) as from_file:
        assert from_file.get("a") == b"1"


def test_store_client_without_the_key_can_neither_read_nor_write(master, keyed, caplog):
    caplog.set_level(logging.WARNING, logger=STORE_LOG)
    master.set("secret", "1")
    keyed.delenv("PYC10D_AUTH_KEY")
    intruder = _client(master)
    where = f"{intruder._resources.conn.sock.getsockname()[1]}"
    intruder.set("planted", "x")  # not acknowledged: the refusal comes with the next reply
    with pytest.raises(DistStoreError, match="authentication required"):
        intruder.get("secret")
    with pytest.raises(DistNetworkError, match="lost its connection"):  # dropped
        intruder.get("secret")
    intruder.close()
    with pytest.raises(DistStoreError, match="authentication required"):
        _client(master, world_size=2)  # its join is refused too
    assert not master.check(["planted"])
    assert any(where in m and "did not authenticate" in m for m in _logged(caplog))
    assert master.get("secret") == b"1"  # the job is unaffected


def test_store_client_with_a_wrong_key_is_rejected(master, keyed, caplog):
    caplog.set_level(logging.WARNING, logger=STORE_LOG)
    keyed.setenv("PYC10D_AUTH_KEY", "not-the-key")
    with pytest.raises(AuthenticationError, match="rejected this process's authentication key"):
        _client(master)
    assert any("wrong authentication proof" in m for m in _logged(caplog))
    keyed.setenv("PYC10D_AUTH_KEY", KEY)
    with _client(master) as client:
        client.set("still", "fine")


def test_store_key_on_the_client_only_is_a_clear_error(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger=STORE_LOG)
    monkeypatch.delenv("PYC10D_AUTH_KEY", raising=False)
    monkeypatch.delenv("PYC10D_AUTH_KEY_FILE", raising=False)
    with TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=10) as plain:
        monkeypatch.setenv("PYC10D_AUTH_KEY", KEY)
        start = time.monotonic()
        with pytest.raises(AuthenticationError, match="does not use authentication"):
            TCPStore("127.0.0.1", plain.port, timeout=30)
        assert time.monotonic() - start < 5
        assert any("tried to authenticate" in m for m in _logged(caplog))
        monkeypatch.delenv("PYC10D_AUTH_KEY")
        with TCPStore("127.0.0.1", plain.port, timeout=10) as client:  # no key: as before
            client.set("k", "v")
            assert plain.get("k") == b"v"


def test_silent_connection_to_a_keyed_store_is_dropped(master, caplog, monkeypatch):
    from pyc10d.store.tcp import server

    monkeypatch.setattr(server, "AUTH_TIMEOUT_S", 0.2)
    caplog.set_level(logging.WARNING, logger=STORE_LOG)
    with TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=10) as quick:
        with socket.create_connection(("127.0.0.1", quick.port), timeout=10) as silent:
            assert silent.recv(1) == b""
        assert any("did not authenticate within" in m for m in _logged(caplog))


# -- the mesh -----------------------------------------------------------------------------------
def _address(store, rank: int) -> str:
    store.wait([ADDR_KEY.format(rank)], 20)
    return store.get(ADDR_KEY.format(rank)).decode()


def _try(ident: Identity, addr: str) -> str:
    host, _, port = addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            shake_hands(sock, ident, 0, addr)
        except DistBackendError as exc:
            return str(exc)
    return "joined"


def test_mesh_with_the_key_rejects_processes_without_it(keyed, caplog):
    caplog.set_level(logging.WARNING, logger=MESH_LOG)
    store = HashStore()
    first = Background(TCPTransport, store, 0, 2, Deadline(30))
    addr = _address(store, 0)
    store.set(ADDR_KEY.format(1), "127.0.0.1:1")  # rank 0 starts accepting before rank 1 runs
    nonce = store.get(NONCE_KEY)  # the worst case: the intruders know the group nonce
    wrong = _try(Identity(nonce, 1, 2, b"not-the-key"), addr)
    keyless = _try(Identity(nonce, 1, 2, None), addr)
    assert "rejected this process's authentication key" in wrong
    assert "requires authentication, but this rank has no key" in keyless
    second = Background(TCPTransport, store, 1, 2, Deadline(30))
    a, b = first.result(30), second.result(30)
    try:
        a.send(1, 3, b"fine", Deadline(10))
        assert b.recv_bytes(0, 3, Deadline(10)) == b"fine"
    finally:
        a.close()
        b.close()
    logged = _logged(caplog)
    assert any("wrong authentication proof" in m for m in logged), logged
    assert any("did not authenticate" in m for m in logged), logged


def test_mesh_key_on_one_side_only_fails_at_once(monkeypatch):
    monkeypatch.delenv("PYC10D_AUTH_KEY", raising=False)
    monkeypatch.delenv("PYC10D_AUTH_KEY_FILE", raising=False)
    for keyed_rank in (1, 0):
        store = HashStore()
        if keyed_rank == 0:
            monkeypatch.setenv("PYC10D_AUTH_KEY", KEY)
        first = Background(TCPTransport, store, 0, 2, Deadline(2))
        _address(store, 0)  # rank 0 has read its key (or none)
        if keyed_rank == 1:
            monkeypatch.setenv("PYC10D_AUTH_KEY", KEY)
        else:
            monkeypatch.delenv("PYC10D_AUTH_KEY")
        start = time.monotonic()
        second = Background(TCPTransport, store, 1, 2, Deadline(30))
        expected = "does not use authentication" if keyed_rank == 1 else "requires authentication"
        with pytest.raises(DistBackendError, match=expected):
            second.result(30)
        assert time.monotonic() - start < 5
        with pytest.raises(DistBackendError, match=r"ranks \[1\] never connected"):
            first.result(30)
        monkeypatch.delenv("PYC10D_AUTH_KEY", raising=False)


def test_shm_descriptor_notes_need_the_key():
    bells = {1: b"\0bell-1", 2: b"\0bell-2"}
    mine = b"\0bell-0"
    note = descriptor_note(b"k", 1, bells[1], mine)
    assert descriptor_sender(b"k", note, mine, bells) == 1
    assert descriptor_sender(b"other", note, mine, bells) is None  # forged without the key
    assert descriptor_sender(b"k", note, b"\0elsewhere", bells) is None  # not for this doorbell
    assert descriptor_sender(b"k", descriptor_note(b"k", 2, bells[1], mine), mine, bells) is None
    assert descriptor_sender(b"k", descriptor_note(None, 1, bells[1], mine), mine, bells) is None
    assert descriptor_sender(None, descriptor_note(None, 1, bells[1], mine), mine, bells) == 1
    assert descriptor_sender(None, descriptor_note(None, 7, bells[1], mine), mine, bells) is None


# -- whole jobs ---------------------------------------------------------------------------------
def _intrude(ctx) -> list[str]:
    """From the last rank, before it joins: a wrong key and no key try to join rank 0's mesh."""
    deadline = Deadline(30)
    suffix = "/" + ADDR_KEY.format(0)
    while not (found := [k for k in ctx.store.list_keys() if k.endswith(suffix)]):
        assert not deadline.expired(), "rank 0 never published its setup address"
        time.sleep(0.01)
    group = PrefixStore(found[0][: -len(suffix)], ctx.store)
    group.set(ADDR_KEY.format(ctx.rank), "127.0.0.1:1")  # lets the others start accepting
    addr, nonce = _address(group, 0), group.get(NONCE_KEY)
    me = ctx.rank
    return [_try(Identity(nonce, me, ctx.world_size, k), addr) for k in (b"wrong", None)]


def authenticated_job(ctx, intrude: bool) -> list[str]:
    import torch

    refused = _intrude(ctx) if intrude and ctx.rank == ctx.world_size - 1 else []
    pg = make_pg(ctx)
    t = torch.ones(4) * (ctx.rank + 1)
    pg.allreduce([t]).wait()
    assert t.tolist() == [sum(range(1, ctx.world_size + 1))] * 4
    ctx.store.set(f"done/{ctx.rank}", "1")
    ctx.store.wait([f"done/{r}" for r in range(ctx.world_size)], 30)
    pg.shutdown()
    return refused


@pytest.mark.parametrize(
    "world_size, transport", [(2, "tcp"), (3, "tcp"), (2, "auto"), (3, "auto")]
)
def test_jobs_with_the_key_on_every_rank(monkeypatch, world_size, transport):
    # the ranks fork from multiprocessing's forkserver, which keeps the environment it started
    # with: start it before the key is set, or every later spawn's ranks would have the key too
    multiprocessing.forkserver.ensure_running()
    monkeypatch.setenv("PYC10D_AUTH_KEY", KEY)
    monkeypatch.setenv("PYC10D_TRANSPORT", transport)
    intrude = (world_size, transport) == (3, "tcp")
    results = spawn(authenticated_job, world_size, args=(intrude,), timeout=90)
    assert results[:-1] == [[]] * (world_size - 1)
    if intrude:
        wrong, keyless = results[-1]
        assert "rejected this process's authentication key" in wrong
        assert "requires authentication" in keyless


def test_store_errors_are_distnetworkerrors():
    assert issubclass(AuthenticationError, DistNetworkError)
