"""rendezvous(): tcp://, env:// and file:// URLs, custom handlers and malformed input."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

import pyc10d
from pyc10d import FileStore, HashStore, TCPStore, register_rendezvous_handler, rendezvous
from pyc10d.testing import free_port


def test_tcp_port_zero_single_rank_picks_a_real_port():
    store, rank, world_size = next(rendezvous("tcp://127.0.0.1:0?rank=0&world_size=1"))
    assert isinstance(store, TCPStore)
    assert (rank, world_size) == (0, 1)
    assert store.port > 0
    store.set("k", "v")
    with TCPStore("127.0.0.1", store.port, timeout=5) as other:
        assert other.get("k") == b"v"
    store.close()


def test_tcp_two_ranks_share_a_store():
    port = free_port()
    results = {}

    def rank1():
        results[1] = next(
            rendezvous(f"tcp://127.0.0.1:{port}", 1, 2, timeout=timedelta(seconds=10))
        )

    thread = threading.Thread(target=rank1)
    thread.start()
    store0, rank, world_size = next(
        rendezvous(f"tcp://127.0.0.1:{port}", rank=0, world_size=2, timeout=timedelta(seconds=10))
    )
    thread.join(10)
    store1, rank1_, world_size1 = results[1]
    assert (rank, world_size, rank1_, world_size1) == (0, 2, 1, 2)
    store1.set("from1", "hello")
    assert store0.get("from1") == b"hello"
    assert store0.timeout == timedelta(seconds=10)
    store1.close()
    store0.close()


def test_rendezvous_iterator_refuses_re_rendezvous():
    iterator = rendezvous("tcp://127.0.0.1:0?rank=0&world_size=1")
    store, _, _ = next(iterator)
    with pytest.raises(RuntimeError, match="re-rendezvous"):
        next(iterator)
    store.close()


def test_env(monkeypatch):
    port = free_port()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    store, rank, world_size = next(rendezvous("env://"))
    assert (rank, world_size, store.port) == (0, 1, port)
    store.close()


def test_env_arguments_override_variables(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "8")
    store, rank, world_size = next(rendezvous("env://", rank=0, world_size=1))
    assert (rank, world_size) == (0, 1)
    store.close()


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"])
def test_env_missing_variable_is_named(monkeypatch, missing):
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "0", "WORLD_SIZE": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(missing)
    with pytest.raises(ValueError, match=f"environment variable {missing} expected, but not set"):
        next(rendezvous("env://"))


def test_env_non_integer_variable(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "http")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="MASTER_PORT is not an integer"):
        next(rendezvous("env://"))


def test_file(tmp_path):
    path = tmp_path / "rdzv"
    store, rank, world_size = next(rendezvous(f"file://{path}?rank=0&world_size=1"))
    assert isinstance(store, FileStore)
    assert (rank, world_size) == (0, 1)
    store.set("k", "v")
    assert store.get("k") == b"v"
    store.close()
    assert not path.exists()  # the only user closed: the file is cleaned up


def test_file_rank_and_size_from_arguments(tmp_path):
    store, rank, world_size = next(rendezvous(f"file://{tmp_path / 'f'}", rank=1, world_size=2))
    assert (rank, world_size) == (1, 2)
    store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("tcp://127.0.0.1:1234?world_size=2", "rank parameter missing"),
        ("tcp://127.0.0.1:1234?rank=0", "world size parameter missing"),
        ("tcp://127.0.0.1?rank=0&world_size=1", "port number missing"),
        ("tcp://127.0.0.1:99999?rank=0&world_size=1", "invalid port"),
        ("tcp://:1234?rank=0&world_size=1", "host name missing"),
        ("tcp://127.0.0.1:1234?rank=x&world_size=1", "rank parameter is not an integer"),
        ("tcp://127.0.0.1:1234?rank=2&world_size=2", "rank 2 is out of range"),
        ("file://?rank=0&world_size=1", "path missing"),
        ("file:///tmp/x?rank=0", "world size parameter missing"),
        ("127.0.0.1:1234", "no scheme"),
        ("udp://127.0.0.1:1234", "No rendezvous handler for udp://"),
    ],
)
def test_malformed_urls(url, message):
    with pytest.raises(ValueError, match=message):
        next(rendezvous(url))


def test_rank_given_twice():
    with pytest.raises(ValueError, match="node-specific arguments"):
        rendezvous("tcp://127.0.0.1:1234?rank=0&world_size=1", rank=0)


def test_non_string_url():
    with pytest.raises(ValueError, match="must be a str"):
        rendezvous(42)


def test_register_custom_handler():
    seen = []

    def handler(url, **kwargs):
        seen.append((url, kwargs))
        yield HashStore(), 0, 1

    register_rendezvous_handler("pyc10dtest", handler)
    store, rank, world_size = next(rendezvous("pyc10dtest://anything", extra=1))
    assert isinstance(store, HashStore) and (rank, world_size) == (0, 1)
    assert seen == [("pyc10dtest://anything", {"extra": 1})]
    with pytest.raises(RuntimeError, match="already registered"):
        register_rendezvous_handler("pyc10dtest", handler)


def test_exported_from_package():
    assert pyc10d.rendezvous is rendezvous
