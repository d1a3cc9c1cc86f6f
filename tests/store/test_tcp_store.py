"""TCPStore server and client behaviour beyond the common Store API."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from pyc10d import DistNetworkError, DistStoreError, TCPStore
from pyc10d.store.tcp.protocol import Op, encode
from pyc10d.testing import free_port


@pytest.fixture
def master():
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=10)
    yield store
    store.close()


def client_of(master: TCPStore, **kwargs) -> TCPStore:
    return TCPStore("127.0.0.1", master.port, timeout=kwargs.pop("timeout", 10), **kwargs)


def test_port_zero_picks_a_real_port(master):
    assert 0 < master.port < 65536
    assert master.host == "127.0.0.1"
    assert master.libuvBackend is False
    with client_of(master) as client:
        client.set("k", "v")
        assert master.get("k") == b"v"


def test_hostname_localhost_connects(master):
    with TCPStore("localhost", master.port, timeout=5) as client:
        client.set("via-name", "1")
        assert master.get("via-name") == b"1"


def test_client_needs_a_port():
    with pytest.raises(ValueError, match="port 0"):
        TCPStore("127.0.0.1", 0, is_master=False)
    with pytest.raises(ValueError, match="port"):
        TCPStore("127.0.0.1", 70000, is_master=True)


def test_wait_for_workers_returns_when_all_joined():
    port = free_port()
    joined = []

    def worker():
        joined.append(TCPStore("127.0.0.1", port, world_size=3, timeout=10))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    master = TCPStore("127.0.0.1", port, world_size=3, is_master=True, timeout=10)
    for t in threads:
        t.join(10)
    assert len(joined) == 2
    assert master.num_keys() == 0  # the worker count is bookkeeping, not a user key
    for store in [*joined, master]:
        store.close()


def test_wait_for_workers_times_out_naming_the_count():
    start = time.monotonic()
    with pytest.raises(DistStoreError, match=r"timed out.*1/2 clients joined"):
        TCPStore("127.0.0.1", 0, world_size=2, is_master=True, timeout=timedelta(seconds=0.5))
    assert time.monotonic() - start < 5


def test_clients_with_different_world_sizes_fail_at_once():
    """Every instance publishes its world_size; one that differs fails at once, naming both."""
    master = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=30)
    first = TCPStore("127.0.0.1", master.port, world_size=2, timeout=30)
    start = time.monotonic()
    with pytest.raises(
        DistStoreError,
        match=r"world size mismatch in the TCPStore at 127\.0\.0\.1:\d+: a client has "
        r"world_size=3 but a client has world_size=2",
    ):
        TCPStore("127.0.0.1", master.port, world_size=3, timeout=30)
    assert time.monotonic() - start < 5
    first.close()
    master.close()


class _Progress(logging.Handler):
    """Keeps the messages of a logger; ``seen`` is set by the first one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.seen.set()


def test_waiting_master_logs_progress_and_fails_on_a_mismatch(monkeypatch):
    """The master logs how many joined while it waits; a client with another world_size fails,
    and so does the master, at once (not after its 60 s timeout, nor with "2/2 joined")."""
    monkeypatch.setenv("PYC10D_RENDEZVOUS_PROGRESS_S", "0.1")
    port = free_port()
    progress = _Progress()
    logger = logging.getLogger("pyc10d.store.tcp.join")
    logger.addHandler(progress)
    outcome = {}

    def master():
        try:
            TCPStore("127.0.0.1", port, world_size=2, is_master=True, timeout=60)
        except DistStoreError as exc:
            outcome["master"] = exc

    thread = threading.Thread(target=master, daemon=True)
    try:
        thread.start()
        assert progress.seen.wait(30)  # the master has joined and waits
        start = time.monotonic()
        with pytest.raises(DistStoreError) as info:
            TCPStore("127.0.0.1", port, world_size=3, timeout=60)
        thread.join(30)
        assert time.monotonic() - start < 10
    finally:
        logger.removeHandler(progress)
    expected = "a client has world_size=3 but the master has world_size=2"
    assert expected in str(info.value)
    assert expected in str(outcome["master"])
    assert progress.messages[0].startswith(
        f"pyc10d: TCPStore master waiting for clients (1/2 joined) at 127.0.0.1:{port}, "
    )


def test_connecting_to_no_server_times_out_naming_it():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        start = time.monotonic()
        with pytest.raises(DistNetworkError, match=rf"timed out.*127\.0\.0\.1:{port}"):
            TCPStore("127.0.0.1", port, timeout=timedelta(seconds=1))
        assert time.monotonic() - start < 5


def test_client_retries_until_the_server_starts():
    port = free_port()
    started = threading.Event()
    result = {}

    def late_client():
        started.set()
        result["store"] = TCPStore("127.0.0.1", port, timeout=10)

    thread = threading.Thread(target=late_client)
    thread.start()
    started.wait(5)
    master = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=10)
    thread.join(10)
    result["store"].set("late", "ok")
    assert master.get("late") == b"ok"
    result["store"].close()
    master.close()


def test_port_already_in_use(master):
    start = time.monotonic()
    with pytest.raises(DistNetworkError, match=rf"port {master.port}.*already in use"):
        TCPStore("127.0.0.1", master.port, is_master=True, wait_for_workers=False, timeout=2)
    assert time.monotonic() - start < 5
    master.set("still", "serving")
    assert master.get("still") == b"serving"


def test_multi_tenant_masters_share_one_server():
    first = TCPStore("127.0.0.1", 0, is_master=True, multi_tenant=True, wait_for_workers=False)
    second = TCPStore(
        "127.0.0.1", first.port, is_master=True, multi_tenant=True, wait_for_workers=False
    )
    second.set("shared", "yes")
    assert first.get("shared") == b"yes"
    first.close()  # the server stays up while the second tenant uses it
    assert second.get("shared") == b"yes"
    second.close()


def test_dead_server_fails_pending_and_later_ops(master):
    client = client_of(master, timeout=30)
    errors = []

    def blocked_get():
        try:
            client.get("never-set")
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=blocked_get)
    thread.start()
    while not _parked_waiters(master):  # the get is parked once the server has seen it
        master.ping()
    start = time.monotonic()
    master.close()
    thread.join(10)
    assert time.monotonic() - start < 5
    assert len(errors) == 1 and isinstance(errors[0], DistNetworkError)
    assert f"127.0.0.1:{master.port}" in str(errors[0])
    with pytest.raises(DistStoreError, match="closed"):
        client.get("anything")


def _parked_waiters(master: TCPStore) -> int:
    server = master._resources.server
    while True:
        try:  # the server thread may be changing the dict right now
            return sum(len(v) for v in list(server._key_waiters.values()))
        except RuntimeError:
            continue


def test_close_is_idempotent_and_later_ops_fail(master):
    client = client_of(master)
    client.close()
    client.close()
    with pytest.raises(DistStoreError, match="closed"):
        client.set("k", "v")


def _raw(master: TCPStore) -> socket.socket:
    return socket.create_connection(("127.0.0.1", master.port), timeout=5)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff" * 64,  # absurd frame length
        struct.pack("<IBIq", 13, 99, 0, 0),  # unknown opcode
        struct.pack("<IBIq", 13, Op.GET, 5, 0),  # arguments past the end of the frame
        struct.pack("<IBIq", 19, Op.GET, 1, 0) + struct.pack("<I", 2) + b"\xff\xfe",  # bad UTF-8
    ],
)
def test_garbage_drops_only_that_connection(master, garbage):
    good = client_of(master)
    with _raw(master) as bad:
        bad.sendall(garbage)
        answer = b""
        while chunk := bad.recv(4096):  # until the server hangs up on it
            answer += chunk
        if garbage.startswith(b"\xff" * 4):  # an oversized frame is told the limit first
            assert b"PYC10D_STORE_MAX_FRAME" in answer
        else:
            assert answer == b""
    good.set("k", "v")
    assert good.get("k") == b"v"
    good.close()


def test_disconnect_mid_frame_is_dropped(master):
    good = client_of(master)
    frame = encode(Op.ADD, 1, [b"counter"])
    with _raw(master) as bad:
        bad.sendall(frame[:7])
    with _raw(master) as bad:
        bad.sendall(frame + frame[:10])
        assert len(bad.recv(100)) > 0  # the complete ADD was answered before the hang-up
    assert good.add("counter", 0) == 1  # the complete frame counted, the cut one did not
    good.close()


def test_hundreds_of_concurrent_clients(master):
    clients = 200

    def work(i: int) -> bytes:
        with client_of(master) as store:
            store.add("joined", 1)
            store.set(f"client/{i}", str(i))
            store.wait(["go"])
            return store.get(f"client/{(i + 1) % clients}")

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(work, i) for i in range(clients)]
        master.wait([f"client/{i}" for i in range(clients)])
        master.set("go", "1")
        results = [f.result(timeout=30) for f in futures]
    assert results == [str((i + 1) % clients).encode() for i in range(clients)]
    assert master.get("joined") == str(clients).encode()


def test_many_waiters_on_one_key_all_wake(master):
    clients = [client_of(master) for _ in range(20)]
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(c.get, "signal") for c in clients]
        while _parked_waiters(master) < len(clients):
            master.ping()
        master.set("signal", "now")
        assert [f.result(timeout=10) for f in futures] == [b"now"] * len(clients)
    for c in clients:
        c.close()


def test_timed_out_waiters_are_forgotten(master):
    for _ in range(5):
        with pytest.raises(DistStoreError):
            master.wait(["absent"], timedelta(milliseconds=20))
    assert _parked_waiters(master) == 0


def test_zero_timeout_means_no_timeout_like_torch(master):
    client = client_of(master, timeout=timedelta(0))
    result = []
    thread = threading.Thread(target=lambda: result.append(client.get("eventually")))
    thread.start()
    while _parked_waiters(master) < 1:
        master.ping()
    master.set("eventually", "here")
    thread.join(10)
    assert result == [b"here"]
    client.close()
