"""What a TCPStore client may cost the server: parked requests, frame sizes, buffers, connections.

The assertions read the server's own counters (``StoreServer.stats``), never the process's RSS.
"""

from __future__ import annotations

import socket
import time

import pytest

from pyc10d import DistStoreError, TCPStore
from pyc10d.core.timeouts import Deadline
from pyc10d.store.tcp.protocol import HEADER, Op, Status, decode, encode, frame_size
from pyc10d.store.tcp.server import OUT_PAUSE


def _master() -> TCPStore:
    return TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=10)


def _stats(master: TCPStore) -> dict[str, int]:
    server = master._resources.server
    assert server is not None
    return server.stats()


def _until(master: TCPStore, what: str, check, seconds: float = 10.0) -> dict[str, int]:
    """Poll the server's counters until ``check(stats)`` holds (the loop thread gets there)."""
    deadline = Deadline(seconds)
    while not check(stats := _stats(master)):
        assert not deadline.expired(), f"server never got to {what}: {stats}"
        time.sleep(0.005)
    return stats


def _raw(master: TCPStore) -> socket.socket:
    return socket.create_connection(("127.0.0.1", master.port), timeout=10)


def _read_reply(sock: socket.socket) -> tuple[int, int, list[bytes]] | None:
    """One reply frame from ``sock`` (read exactly); None if it hung up first."""
    buf = b""
    while len(buf) < 4 or len(buf) < frame_size(buf):
        chunk = sock.recv((4 if len(buf) < 4 else frame_size(buf)) - len(buf))
        if not chunk:
            return None
        buf += chunk
    frame = decode(buf, 0)
    assert frame is not None
    return frame[1], frame[2], frame[3]


@pytest.fixture
def master():
    store = _master()
    yield store
    store.close()


def test_requests_parked_by_a_client_that_leaves_are_freed(master):
    with _raw(master) as sock:
        frames = []
        for i in range(2000):
            if i % 4 == 0:  # no timeout: parked forever unless freed
                frames.append(encode(Op.GET, 0, [f"never/{i}".encode()]))
            elif i % 4 == 1:  # a long timeout: a timer entry too
                frames.append(encode(Op.GET, 300_000, [f"never/{i}".encode()]))
            elif i % 4 == 2:
                frames.append(encode(Op.MULTI_GET, 300_000, [b"never/shared", f"n/{i}".encode()]))
            else:
                frames.append(encode(Op.QUEUE_POP, 300_000, [b"never/queue"]))
        sock.sendall(b"".join(frames))
        _until(master, "2000 parked requests", lambda s: s["parked"] == 2000)
    stats = _until(master, "freeing them", lambda s: s["parked"] == 0 and s["connections"] == 1)
    assert stats["timers"] == 0  # the 1500 timer entries went with them
    master.set("never/0", "late")  # nobody is answered (nor crashes the server) any more
    assert master.get("never/0") == b"late"
    assert _stats(master)["parked"] == 0


def test_parked_requests_answered_by_keys_leave_no_timers_behind(master):
    with TCPStore("127.0.0.1", master.port, timeout=10) as client, _raw(master) as sock:
        sock.sendall(b"".join(encode(Op.GET, 300_000, [f"k/{i}".encode()]) for i in range(1500)))
        _until(master, "1500 parked requests", lambda s: s["parked"] == 1500)
        client.multi_set([f"k/{i}" for i in range(1500)], [b"v"] * 1500)
        for _ in range(1500):
            assert _read_reply(sock) == (Status.OK, 0, [b"v"])
        assert client.get("k/0") == b"v"  # the server is past the multi_set
        stats = _stats(master)
    assert stats["parked"] == 0 and stats["timers"] < 1024, stats  # compacted, not 300 s later


def test_oversized_frame_gets_an_error_and_others_keep_being_served(master):
    with TCPStore("127.0.0.1", master.port, timeout=10) as good, _raw(master) as bad:
        bad.sendall(HEADER.pack(1 << 30, Op.SET, 2, 0) + b"x" * 1000)  # announces 1 GiB
        status, _, args = _read_reply(bad)
        assert status == Status.ERROR
        message = args[0].decode()
        assert "1073741824 bytes exceeds the server's limit of 67108864" in message
        assert "PYC10D_STORE_MAX_FRAME" in message
        while bad.recv(1 << 16):  # the rest is thrown away, then the server hangs up
            pass
        assert _stats(master)["buffered"] < 1 << 20
        good.set("k", "v")
        assert good.get("k") == b"v"


def test_client_refuses_a_frame_over_its_limit_and_stays_usable(master, monkeypatch):
    monkeypatch.setenv("PYC10D_STORE_MAX_FRAME", "64K")
    with TCPStore("127.0.0.1", master.port, timeout=10) as client:
        with pytest.raises(DistStoreError, match=r"exceeds the client's limit of 65536 bytes"):
            client.set("big", b"x" * 70_000)
        client.set("small", b"x" * 60_000)
        assert client.get("small") == b"x" * 60_000
        assert not master.check(["big"])


def test_client_with_a_larger_limit_gets_the_servers_error(monkeypatch):
    monkeypatch.setenv("PYC10D_STORE_MAX_FRAME", "1M")
    with _master() as master:
        monkeypatch.setenv("PYC10D_STORE_MAX_FRAME", "8M")
        client = TCPStore("127.0.0.1", master.port, timeout=10)
        with pytest.raises(DistStoreError, match=r"exceeds the server's limit of 1048576"):
            client.compare_set("big", "", b"x" * (2 << 20))
        client.close()
        with TCPStore("127.0.0.1", master.port, timeout=10) as other:
            other.set("after", "1")
            assert master.get("after") == b"1"
        assert not master.check(["big"])


def test_bad_limit_settings_are_rejected(monkeypatch):
    monkeypatch.setenv("PYC10D_STORE_MAX_FRAME", "lots")
    with pytest.raises(ValueError, match="PYC10D_STORE_MAX_FRAME must be a byte count"):
        _master()
    monkeypatch.setenv("PYC10D_STORE_MAX_FRAME", "1M")
    monkeypatch.setenv("PYC10D_STORE_MAX_CONNECTIONS", "0")
    with pytest.raises(ValueError, match="PYC10D_STORE_MAX_CONNECTIONS must be a positive int"):
        _master()


def test_too_many_connections_are_refused_with_a_message(monkeypatch):
    monkeypatch.setenv("PYC10D_STORE_MAX_CONNECTIONS", "3")
    with _master() as master:  # its own client is one
        clients = [TCPStore("127.0.0.1", master.port, timeout=10) for _ in range(2)]
        for c in clients:
            c.ping()
        extra = TCPStore("127.0.0.1", master.port, timeout=10)
        with pytest.raises(DistStoreError, match="refused this connection: it already has 3"):
            extra.ping()
        extra.close()
        with pytest.raises(DistStoreError, match="PYC10D_STORE_MAX_CONNECTIONS"):
            TCPStore("127.0.0.1", master.port, world_size=4, timeout=10)  # its join fails
        clients.pop().close()
        _until(master, "a free slot", lambda s: s["connections"] - s["lingering"] < 3)
        with TCPStore("127.0.0.1", master.port, timeout=10) as late:
            late.set("k", "v")
            assert master.get("k") == b"v"
        for c in clients:
            c.close()


def test_a_client_that_does_not_read_its_replies_is_paused(master):
    value = b"v" * (256 << 10)
    master.set("big", value)
    count = 200  # 50 MiB of replies
    with _raw(master) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.sendall(b"".join(encode(Op.GET, 0, [b"big"]) for _ in range(count)))
        stats = _until(master, "pausing the reader", lambda s: s["paused"] == 1)
        assert stats["buffered"] <= OUT_PAUSE + 2 * len(value) + (1 << 16), stats
        assert master.get("big") == value  # others are served meanwhile
        sock.settimeout(30)
        got = [_read_reply(sock) for _ in range(count)]  # reading resumes the rest
    assert got == [(Status.OK, 0, [value])] * count
    _until(master, "the connection to go", lambda s: s["connections"] == 1 and s["paused"] == 0)


def test_raw_server_limit_arguments():
    from pyc10d.store.tcp.server import ServerLimits, StoreServer

    server = StoreServer(0, key=None, limits=ServerLimits(max_frame=100, max_connections=10))
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(encode(Op.SET, 0, [b"k", b"x" * 200]))
            status, _, args = _read_reply(sock)
            assert status == Status.ERROR and b"limit of 100 bytes" in args[0]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(encode(Op.PING, 5))
            assert _read_reply(sock) == (Status.OK, 5, [])
    finally:
        server.stop()
