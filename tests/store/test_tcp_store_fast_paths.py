"""The TCPStore server's fast paths keep the store's semantics: runs of SETs applied at once,
requests parsed in place, replies batched per wake-up, counters bounded to int64, and a client
whose reply never comes times out (kernel-timed blocking socket)."""

from __future__ import annotations

import socket
import threading

import pytest

from pyc10d import DistStoreError, TCPStore
from pyc10d.store.table import INTERNAL_PREFIX
from pyc10d.store.tcp.protocol import Op, Status, decode, encode, frame_size
from pyc10d.testing import spawn, world_sizes

RUN = 8  # a run of unacknowledged SETs sent back to back in one write


@pytest.fixture
def master():
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=10)
    yield store
    store.close()


def _raw(master: TCPStore) -> socket.socket:
    return socket.create_connection(("127.0.0.1", master.port), timeout=10)


def _replies(sock: socket.socket, count: int) -> list[tuple[int, int, list[bytes]]]:
    """Read exactly ``count`` reply frames."""
    buf = b""
    replies = []
    while len(replies) < count:
        while len(buf) < 4 or len(buf) < frame_size(buf):
            chunk = sock.recv(1 << 16)
            assert chunk, "the server hung up"
            buf += chunk
        end, status, num, args = decode(buf, 0)
        replies.append((status, num, args))
        buf = buf[end:]
    return replies


def _sets(pairs) -> bytes:
    return b"".join(encode(Op.SET, 0, (key.encode(), value)) for key, value in pairs)


def test_a_run_of_sets_is_applied_in_order(master):
    count = 5 * RUN
    pairs = [(f"run/{i % 7}", b"%03d" % i) for i in range(count)]  # keys repeat
    last = {i % 7: b"%03d" % i for i in range(count)}  # the last value set wins
    with _raw(master) as sock:
        sock.sendall(_sets(pairs) + encode(Op.GET, 0, [b"run/3"]))
        assert _replies(sock, 1) == [(Status.OK, 0, [last[3]])]
    assert [master.get(f"run/{i}") for i in range(7)] == [last[i] for i in range(7)]
    assert master.num_keys() == 7


def test_a_run_counts_new_user_keys_only(master):
    master.set("old/0", b"v")
    internal = [(f"{INTERNAL_PREFIX}x{i}", b"v") for i in range(RUN)]
    users = [(f"old/{i}", b"v") for i in range(RUN)]  # old/0 exists: 7 new ones
    with _raw(master) as sock:
        sock.sendall(_sets(internal + users) + encode(Op.PING, 1))
        assert _replies(sock, 1) == [(Status.OK, 1, [])]
    assert master.num_keys() == RUN
    assert sorted(master.list_keys()) == sorted(k for k, _ in users)


def test_sets_of_mixed_shapes_and_acknowledged_ones_in_one_read(master):
    frames = _sets((f"k/{i}", b"x" * (i % 3)) for i in range(3 * RUN))
    frames += b"".join(encode(Op.SET, 1, (b"acked/%d" % i, b"a")) for i in range(RUN))
    frames += _sets((f"same/{i}", b"s") for i in range(RUN))
    with _raw(master) as sock:
        sock.sendall(frames)
        assert _replies(sock, RUN) == [(Status.OK, 0, [])] * RUN  # only acked ones
    assert master.multi_get([f"k/{i}" for i in range(3 * RUN)]) == [
        b"x" * (i % 3) for i in range(3 * RUN)
    ]
    assert master.get(f"acked/{RUN - 1}") == b"a"
    assert master.get(f"same/{RUN - 1}") == b"s"


def test_a_bad_key_in_a_run_drops_the_client_after_applying_those_before(master):
    good = _sets((f"b/{i}", b"v") for i in range(RUN))
    bad = encode(Op.SET, 0, (b"b/\xff", b"v"))
    with _raw(master) as sock:
        sock.sendall(good + bad + _sets((f"c/{i}", b"v") for i in range(RUN)))
        assert sock.recv(16) == b""  # hung up
    assert master.check([f"b/{i}" for i in range(RUN)])
    assert not master.check(["c/0"])
    master.set("still", "served")
    assert master.get("still") == b"served"


def test_a_run_wakes_a_parked_get(master):
    with _raw(master) as waiting, _raw(master) as writer:
        waiting.sendall(encode(Op.GET, 0, [b"w/5"]))
        while not master._resources.server.stats()["parked"]:
            master.ping()
        writer.sendall(_sets((f"w/{i}", b"%d" % i) for i in range(2 * RUN)))
        assert _replies(waiting, 1) == [(Status.OK, 0, [b"5"])]
    assert master._resources.server.stats()["parked"] == 0


def test_pipelined_requests_get_their_replies_in_order(master):
    master.set("p", b"value")
    requests = []
    expected = []
    for i in range(200):
        requests.append(encode(Op.GET, 0, [b"p"]))
        expected.append((Status.OK, 0, [b"value"]))
        requests.append(encode(Op.ADD, i, [b"counter"]))
        expected.append((Status.OK, sum(range(i + 1)), []))
    with _raw(master) as sock:
        sock.sendall(b"".join(requests))
        assert _replies(sock, len(expected)) == expected


def test_add_beyond_int64_is_a_value_error_and_leaves_the_counter(master):
    assert master.add("big", (1 << 63) - 1) == (1 << 63) - 1
    with pytest.raises(ValueError, match="overflow"):
        master.add("big", 1)
    with pytest.raises(ValueError, match="int64"):
        master.add("big", 1 << 63)
    assert master.add("big", -1) == (1 << 63) - 2
    assert master.get("big") == str((1 << 63) - 2).encode()


def test_a_reply_that_never_comes_times_out():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never answers
        port = silent.getsockname()[1]
        store = TCPStore("127.0.0.1", port, timeout=0.3)
        with pytest.raises(DistStoreError, match=r"timed out after 300ms.*to answer"):
            store.add("k", 1)
        with pytest.raises(DistStoreError, match="closed"):
            store.add("k", 1)
        store.close()


def test_a_reply_that_comes_in_pieces_is_read_whole():
    with socket.create_server(("127.0.0.1", 0)) as server:
        store = TCPStore("127.0.0.1", server.getsockname()[1], timeout=10)
        conn, _ = server.accept()
        results = []
        thread = threading.Thread(target=lambda: results.append(store.get("k")))
        with conn:
            thread.start()
            conn.settimeout(10)
            request = conn.recv(1 << 16)
            assert decode(request, 0)[1] == Op.GET
            reply = encode(Status.OK, 0, [b"v" * 1000])
            for piece in (reply[:3], reply[3:500], reply[500:]):
                conn.sendall(piece)
            thread.join(10)
        assert results == [b"v" * 1000]
        store.close()


def write_and_read(ctx) -> list[bytes]:
    store = ctx.store
    for round_ in range(50):  # unacknowledged sets, back to back: runs on the server
        store.set(f"mp/{ctx.rank}", b"%04d" % round_)
    store.set(f"mp/done/{ctx.rank}", b"1")
    store.wait([f"mp/done/{r}" for r in range(ctx.world_size)])
    return [store.get(f"mp/{r}") for r in range(ctx.world_size)]


@world_sizes(2, 3)
def test_runs_of_sets_from_several_processes(world_size):
    results = spawn(write_and_read, world_size, timeout=60)
    assert results == [[b"0049"] * world_size] * world_size


def test_value_of_every_kind_round_trips(master):
    client = TCPStore("127.0.0.1", master.port, timeout=10)
    for value in (b"", b"\x00" * 3, "text", bytearray(b"ba"), memoryview(b"mv"), b"x" * 300_000):
        client.set("v", value)
        expected = value.encode() if isinstance(value, str) else bytes(value)
        assert client.get("v") == expected
    with pytest.raises(TypeError):
        client.set("v", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.get(5)  # type: ignore[arg-type]
    client.close()


def test_set_timeout_changes_the_servers_wait(master):
    client = TCPStore("127.0.0.1", master.port, timeout=10)
    client.set_timeout(0.2)
    with pytest.raises(DistStoreError, match=r"timed out after 200ms.*'absent'"):
        client.get("absent")
    client.set("present", "1")
    assert client.get("present") == b"1"  # the connection survived the timeout
    client.close()
