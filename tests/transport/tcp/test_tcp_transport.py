"""TCPTransport: the full mesh, message matching, errors, peer failure, threads and close.

Rank bodies are module-level functions (the ranks of ``spawn`` import this module by name). A few
checks run two transports inside one process, on threads, where that is enough.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import traceback

import pytest

from pyc10d.core.errors import DistBackendError, PeerFailedError, TransportTimeout
from pyc10d.core.tags import op_tag, p2p_tag, tag_seq
from pyc10d.core.timeouts import Deadline
from pyc10d.store import HashStore, PrefixStore, TCPStore
from pyc10d.testing import spawn, world_sizes
from pyc10d.transport import TCPTransport
from pyc10d.transport.base import HEADER
from pyc10d.transport.tcp.setup import HELLO, default_advertise_host

from tests.helpers.transport import Background, payload, wait_posted

BIG = 32 * 1024 * 1024
RECEIVER_PREFIX = "pyc10d-tcp-recv"


# -- helpers --------------------------------------------------------------------------------------
def make(ctx, timeout: float = 30.0) -> TCPTransport:
    return TCPTransport(PrefixStore("tx", ctx.store), ctx.rank, ctx.world_size, Deadline(timeout))


def receiver_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(RECEIVER_PREFIX)]


def pair(timeout: float = 10.0) -> tuple[TCPTransport, TCPTransport]:
    """Two connected transports in this process (ranks 0 and 1), built on threads."""
    store = HashStore()
    builders = [Background(TCPTransport, store, r, 2, Deadline(timeout)) for r in range(2)]
    return builders[0].result(), builders[1].result()


# -- rank bodies ----------------------------------------------------------------------------------
SIZES = (0, 1000, BIG)


def all_to_all(ctx) -> int:
    t = make(ctx)
    me, n = ctx.rank, ctx.world_size

    def receive_all() -> int:
        checked = 0
        for k, size in enumerate(SIZES):
            for src in range(n):
                out = bytearray(size)
                t.recv(src, op_tag(100 + src * 8 + me, k), memoryview(out), Deadline(30))
                assert out == payload(src, me, size), (src, size)
                checked += 1
        return checked

    receiving = Background(receive_all)
    for k, size in enumerate(SIZES):
        for dst in [*range(me + 1, n), *range(me + 1)]:  # start at different peers; self too
            t.send(dst, op_tag(100 + me * 8 + dst, k), payload(me, dst, size), Deadline(30))
    checked = receiving.result(60)
    ctx.store.barrier("done", n, 30)
    t.close()
    return checked


@world_sizes(2, 3)
def test_every_rank_exchanges_0_small_and_32mib_messages(world_size):
    results = spawn(all_to_all, world_size, timeout=60)
    assert results == [len(SIZES) * world_size] * world_size


def fifo_and_paths(ctx) -> list[str]:
    t = make(ctx)
    store = ctx.store
    seen = []
    sizes = [5, 300_000, 0, 70_000, 2_000_000, 8]  # some fit the read buffer, some stream
    if ctx.rank == 0:
        for i in range(60):
            data = bytes([i]) * sizes[i % len(sizes)]
            t.send(1, p2p_tag(1), data, Deadline(30))
        # Unexpected path: "marker" is received only after "early" was buffered (one stream).
        t.send(1, p2p_tag(2), payload(0, 1, 500), Deadline(30))
        t.send(1, p2p_tag(3), b"", Deadline(30))
        t.send(1, p2p_tag(4), payload(0, 1, 3_000_000), Deadline(30))
        t.send(1, p2p_tag(3), b"", Deadline(30))
        # Posted path: rank 1 says when its receives are posted.
        store.wait(["posted-small"], 30)
        t.send(1, p2p_tag(5), payload(0, 1, 64), Deadline(30))
        store.wait(["posted-big"], 30)
        t.send(1, p2p_tag(6), payload(0, 1, BIG), Deadline(30))
    else:
        for i in range(60):
            size = sizes[i % len(sizes)]
            out = bytearray(size)
            t.recv(0, p2p_tag(1), memoryview(out), Deadline(30))
            assert out == bytes([i]) * size, f"message {i} out of order"
        seen.append("fifo")
        t.recv(0, p2p_tag(3), memoryview(bytearray()), Deadline(30))
        assert t.recv_bytes(0, p2p_tag(2), Deadline(30)) == payload(0, 1, 500)
        t.recv(0, p2p_tag(3), memoryview(bytearray()), Deadline(30))
        out = bytearray(3_000_000)
        t.recv(0, p2p_tag(4), memoryview(out), Deadline(30))
        assert out == payload(0, 1, 3_000_000)
        seen.append("unexpected")
        for tag, key, size in ((5, "posted-small", 64), (6, "posted-big", BIG)):
            out = bytearray(size)
            pending = Background(t.recv, 0, p2p_tag(tag), memoryview(out), Deadline(30))
            wait_posted(t, p2p_tag(tag))
            store.set(key, "1")
            pending.result()
            assert out == payload(0, 1, size)
        seen.append("posted")
    store.barrier("done", 2, 30)
    t.close()
    return seen


def test_fifo_order_and_both_receive_paths():
    assert spawn(fifo_and_paths, 2, timeout=60) == [[], ["fifo", "unexpected", "posted"]]


def matching_errors(ctx) -> str:
    t = make(ctx)
    store = ctx.store
    me = ctx.rank
    if me in (1, 2):
        t.send(0, p2p_tag(10), bytes([me]) * 100, Deadline(30))
        if me == 1:
            t.send(0, p2p_tag(11), payload(1, 0, 12345), Deadline(30))
            t.send(0, p2p_tag(11), b"", Deadline(30))
            t.send(0, p2p_tag(11), payload(1, 0, 1 << 20), Deadline(30))
            t.send(0, p2p_tag(12), b"0123456789", Deadline(30))
            store.wait(["posted-mismatch"], 30)
            t.send(0, p2p_tag(13), payload(1, 0, 1 << 20), Deadline(30))
            t.send(0, p2p_tag(14), b"still fine", Deadline(30))
    else:
        out = bytearray(100)
        sources = {t.recv_any([1, 2], p2p_tag(10), memoryview(out), Deadline(30)) for _ in "ab"}
        assert sources == {1, 2}
        assert t.recv_bytes(1, p2p_tag(11), Deadline(30)) == payload(1, 0, 12345)
        assert t.recv_bytes(1, p2p_tag(11), Deadline(30)) == b""
        assert t.recv_bytes(1, p2p_tag(11), Deadline(30)) == payload(1, 0, 1 << 20)
        # A buffered message of the wrong size, then a posted (streamed) one.
        with pytest.raises(DistBackendError, match="expected 8 bytes, got 10 bytes"):
            t.recv(1, p2p_tag(12), memoryview(bytearray(8)), Deadline(30))
        pending = Background(t.recv, 1, p2p_tag(13), memoryview(bytearray(1000)), Deadline(30))
        wait_posted(t, p2p_tag(13))
        store.set("posted-mismatch", "1")
        with pytest.raises(DistBackendError, match="expected 1000 bytes, got 1048576 bytes"):
            pending.result()
        out = bytearray(10)
        t.recv(1, p2p_tag(14), memoryview(out), Deadline(30))
        assert out == b"still fine" and t.error is None
        # Sends to itself: buffered first, and posted first.
        t.send(0, p2p_tag(15), b"to myself", Deadline(1))
        assert t.recv_bytes(0, p2p_tag(15), Deadline(1)) == b"to myself"
        out = bytearray(3)
        pending = Background(t.recv_any, [2, 0], p2p_tag(16), memoryview(out), Deadline(30))
        wait_posted(t, p2p_tag(16))
        t.send(0, p2p_tag(16), memoryview(b"abc"), Deadline(1))
        assert pending.result() == 0 and out == b"abc"
    store.barrier("done", ctx.world_size, 30)
    t.close()
    return "ok"


def test_recv_any_recv_bytes_size_mismatch_and_self_sends():
    assert spawn(matching_errors, 3, timeout=60) == ["ok"] * 3


def timeouts_and_discard(ctx) -> str:
    t = make(ctx)
    store = ctx.store
    if ctx.rank == 0:
        start = time.monotonic()
        with pytest.raises(TransportTimeout, match=r"Timed out waiting 500ms for (message|rank 1)"):
            t.recv(1, op_tag(5, 0), memoryview(bytearray(4)), Deadline(0.5))
        assert 0.45 <= time.monotonic() - start < 5
        t.discard(5)
        store.set("discarded", "1")
        out = bytearray(4)
        t.recv(1, op_tag(6, 0), memoryview(out), Deadline(30))  # after the late op 5 message
        assert out == b"six!"
        t.recv(1, op_tag(8, 0), memoryview(out), Deadline(30))  # op 7's message is buffered
        t.discard(7)
        t.discard(tag_seq(p2p_tag(9)))  # p2p messages are never discarded
        for seq, step in ((5, 0), (7, 1)):
            with pytest.raises(TransportTimeout):
                t.recv(1, op_tag(seq, step), memoryview(out), Deadline(0.2))
        assert t.recv_bytes(1, p2p_tag(9), Deadline(30)) == b"p2p"
        assert t.error is None
    else:
        store.wait(["discarded"], 30)
        for tag, data in ((op_tag(5, 0), b"late"), (op_tag(6, 0), b"six!")):
            t.send(0, tag, data, Deadline(30))
        for tag, data in ((op_tag(7, 1), b"dead"), (p2p_tag(9), b"p2p"), (op_tag(8, 0), b"8888")):
            t.send(0, tag, data, Deadline(30))
    store.barrier("done", 2, 30)
    t.close()
    return "ok"


def test_recv_timeout_and_discard():
    assert spawn(timeouts_and_discard, 2, timeout=60) == ["ok"] * 2


def peer_dies(ctx) -> object:
    store = ctx.store if ctx.rank != 2 else None
    if ctx.rank == 2:  # the transport lives in a child that dies abruptly once asked to
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                doomed = make(ctx)  # kept referenced: dropping it would close it cleanly
                ctx.store.wait(["posted/0", "posted/1"], 30)
                code = 0 if doomed.error is None else 2
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    t = make(ctx)
    src = 2  # only what needs rank 2 fails (see tests/transport/test_peer_loss.py)
    pending = Background(t.recv, src, p2p_tag(1), memoryview(bytearray(4)), Deadline(30))
    wait_posted(t, p2p_tag(1))
    start = time.monotonic()
    store.set(f"posted/{ctx.rank}", "1")
    with pytest.raises(PeerFailedError, match="rank 2") as info:
        pending.result()
    elapsed = time.monotonic() - start
    assert info.value.peer == 2 and elapsed < 10, elapsed
    assert t.error is None, repr(t.error)  # the ranks left can go on
    with pytest.raises(PeerFailedError, match="rank 2"):
        t.send(2, p2p_tag(2), b"x", Deadline(5))
    start = time.monotonic()
    with pytest.raises(PeerFailedError, match="rank 2"):
        t.recv(2, p2p_tag(3), memoryview(bytearray(1)), Deadline(5))
    assert time.monotonic() - start < 1
    t.close()
    assert receiver_threads() == []
    return "failed"


def test_peer_exit_fails_pending_and_later_calls():
    assert spawn(peer_dies, 3, timeout=60) == ["failed", "failed", 0]


def concurrent_threads(ctx) -> int:
    t = make(ctx)
    me, peer = ctx.rank, 1 - ctx.rank
    sizes = [1, 4096, 70_000, 400_000, 0]

    def worker(k: int) -> int:
        for i in range(25):
            size = sizes[(i + k) % len(sizes)]
            if me == 0:
                t.send(peer, p2p_tag(k), payload(k, i, size), Deadline(30))
                echo = t.recv_bytes(peer, p2p_tag(100 + k), Deadline(30))
                assert echo == payload(k, i, size)
            else:
                out = bytearray(size)
                t.recv(peer, p2p_tag(k), memoryview(out), Deadline(30))
                t.send(peer, p2p_tag(100 + k), out, Deadline(30))
        return 25

    workers = [Background(worker, k) for k in range(4)]
    done = sum(w.result(60) for w in workers)
    ctx.store.barrier("done", 2, 30)
    t.close()
    return done


def test_threads_send_and_receive_concurrently():
    assert spawn(concurrent_threads, 2, timeout=60) == [100, 100]


def clean_close(ctx) -> str:
    assert ctx.store is not None  # connect the store client before counting descriptors
    fds = len(os.listdir("/proc/self/fd"))
    t = make(ctx)
    assert receiver_threads() == [f"{RECEIVER_PREFIX}-r{ctx.rank}"]
    if ctx.rank == 1:
        t.close()
        t.close()  # idempotent
        ctx.store.set("closed", "1")
        with pytest.raises(DistBackendError, match="closed"):
            t.send(0, p2p_tag(1), b"x", Deadline(1))
        with pytest.raises(DistBackendError, match="closed"):
            t.recv(0, p2p_tag(1), memoryview(bytearray(1)), Deadline(1))
    else:
        ctx.store.wait(["closed"], 30)
        start = time.monotonic()
        with pytest.raises(PeerFailedError, match="rank 1 lost: it closed its transport"):
            t.recv(1, p2p_tag(1), memoryview(bytearray(1)), Deadline(30))
        assert time.monotonic() - start < 5
        assert t.error is None  # a clean close does not fail the transport
        with pytest.raises(PeerFailedError):
            t.send(1, p2p_tag(1), b"x", Deadline(5))
        t.send(0, p2p_tag(2), b"self", Deadline(1))  # still usable with the ranks left
        assert t.recv_bytes(0, p2p_tag(2), Deadline(1)) == b"self"
        t.close()
    assert receiver_threads() == []
    assert len(os.listdir("/proc/self/fd")) == fds
    return "ok"


def test_clean_close_joins_threads_and_only_affects_that_peer():
    assert spawn(clean_close, 2, timeout=60) == ["ok", "ok"]


def setup_without_rank_2(ctx) -> str:
    if ctx.rank == 2:
        return "absent"
    start = time.monotonic()
    with pytest.raises(DistBackendError, match=r"ranks \[2\] never connected") as info:
        make(ctx, timeout=1.0)
    assert time.monotonic() - start < 10
    assert "1000ms" in str(info.value)
    return "ok"


def test_setup_timeout_names_missing_ranks():
    assert spawn(setup_without_rank_2, 3, timeout=60) == ["ok", "ok", "absent"]


def stray_connection(ctx) -> bytes:
    store = PrefixStore("tx", ctx.store)
    stray = None
    if ctx.rank == 1:  # connects to rank 0 before its real connection, with a bad hello
        host, _, port = store.get("transport/addr/0").decode().rpartition(":")
        stray = socket.create_connection((host, int(port)), timeout=10)
        stray.sendall(b"\x00" * HELLO.size)
    t = make(ctx)
    if stray is not None:
        assert stray.recv(1) == b""  # rank 0 hung up on it
        stray.close()
    peer = 1 - ctx.rank
    t.send(peer, p2p_tag(1), f"hi from {ctx.rank}".encode(), Deadline(30))
    got = t.recv_bytes(peer, p2p_tag(1), Deadline(30))
    ctx.store.barrier("done", 2, 30)
    t.close()
    return got


def test_stray_connection_is_rejected():
    assert spawn(stray_connection, 2, timeout=60) == [b"hi from 1", b"hi from 0"]


# -- in-process checks ----------------------------------------------------------------------------
def test_single_rank_and_argument_checks():
    with TCPTransport(HashStore(), 0, 1, Deadline(5)) as t:
        t.send(0, 7, b"alone", Deadline(1))
        assert t.recv_bytes(0, 7, Deadline(1)) == b"alone"
        with pytest.raises(ValueError, match="out of range"):
            t.send(1, 7, b"", Deadline(1))
        with pytest.raises(ValueError, match="out of range"):
            t.recv(-1, 7, memoryview(bytearray(1)), Deadline(1))
        with pytest.raises(ValueError, match="read-only"):
            t.recv(0, 7, memoryview(b"x"), Deadline(1))
        with pytest.raises(ValueError, match="at least one"):
            t.recv_any([], 7, memoryview(bytearray(1)), Deadline(1))
    assert t.error is not None and "closed" in str(t.error)
    with pytest.raises(ValueError):
        TCPTransport(HashStore(), 2, 2, Deadline(5))


def test_advertise_host_defaults():
    server = TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False)
    try:
        assert default_advertise_host(PrefixStore("a", PrefixStore("b", server))) == "127.0.0.1"
    finally:
        server.close()
    assert default_advertise_host(HashStore(), "10.1.2.3") == "10.1.2.3"
    assert default_advertise_host(HashStore()) == socket.gethostbyname(socket.gethostname())


def test_timed_out_receive_being_filled_is_withdrawn_safely():
    a, b = pair()
    try:
        raw = socket.socket(fileno=os.dup(a._conns[1].fd))  # a blocking view of a's socket
        raw.settimeout(10)
        out = bytearray(1 << 20)
        pending = Background(b.recv, 0, 5, memoryview(out), Deadline(1.0))
        wait_posted(b, 5)
        raw.sendall(HEADER.pack(5, len(out)) + b"\x01" * 1000)  # a stalled sender
        stalled = r"message 5 from rank 0|rank 0 \(its message of collective #0\)"
        with pytest.raises(TransportTimeout, match=stalled):
            pending.result()
        raw.sendall(b"\x02" * (len(out) - 1000))  # the rest is dropped, not written to out
        a.send(1, 6, b"next", Deadline(5))
        assert b.recv_bytes(0, 6, Deadline(5)) == b"next"
        assert out[:1000] == b"\x01" * 1000 and out[1000:] == bytes(len(out) - 1000)
        assert a.error is None and b.error is None
    finally:
        raw.close()
        a.close()
        b.close()
    assert receiver_threads() == []


def test_send_timeout_mid_message_fails_the_transport():
    a, b = pair()
    try:
        with b._mb.lock:  # b's receiver thread stalls at the next header: nothing is read
            start = time.monotonic()
            with pytest.raises(TransportTimeout, match="sending message 3 to rank 1"):
                a.send(1, 3, bytes(96 << 20), Deadline(0.5))
            assert time.monotonic() - start < 5
        with pytest.raises(PeerFailedError, match="rank 1 lost: a send to it timed out"):
            a.recv(1, 4, memoryview(bytearray(1)), Deadline(10))
        with pytest.raises(PeerFailedError, match="rank 0 lost"):
            b.recv(0, 4, memoryview(bytearray(1)), Deadline(10))
    finally:
        a.close()
        b.close()
    assert receiver_threads() == []


# -- a large unexpected payload waits briefly for its receive ---------------------------------
def test_large_payload_waits_for_its_receive_then_lands_in_place():
    """The streaming receiver's ``accept`` holds a large payload (>= GRACE_MIN_BYTES) for up to
    its grace period: a receive posted meanwhile gets the bytes in place (no extra buffer)."""
    import threading

    from pyc10d.core.timeouts import Deadline
    from pyc10d.transport.mailbox import DONE, GRACE_MIN_BYTES, Mailbox

    mb, size, tag = Mailbox(), GRACE_MIN_BYTES, 42
    accepted: list = []
    acceptor = threading.Thread(target=lambda: accepted.append(mb.accept(0, tag, size, 30.0)))
    acceptor.start()
    deadline = Deadline(10)
    while not mb._accept_waiting:  # the acceptor is parked in its grace wait
        assert not deadline.expired() and acceptor.is_alive()
        threading.Event().wait(0.001)
    out = bytearray(size)
    received: list = []
    receiver = threading.Thread(
        target=lambda: received.append(
            mb.receive((0,), tag, memoryview(out), Deadline(10), lambda: None)
        )
    )
    receiver.start()
    acceptor.join(10)
    view, dest, pending, failed = accepted[0]
    assert dest is not None and pending is None and failed is None
    view[:] = b"\x07" * size  # what the streaming receiver does: fill the posted buffer...
    dest.src, dest.state = 0, DONE
    dest.wake()  # ...and wake its waiter
    receiver.join(10)
    assert received == [(0, None)] and out == b"\x07" * size


def test_large_payload_without_a_receive_is_buffered_after_the_grace():
    from pyc10d.transport.mailbox import GRACE_MIN_BYTES, Mailbox

    view, dest, pending, failed = Mailbox().accept(0, 42, GRACE_MIN_BYTES, 0.01)
    assert dest is None and failed is None and isinstance(pending, bytearray)
    assert len(view) == GRACE_MIN_BYTES


def back_to_back_large(ctx) -> int:
    """Large messages sent back to back: the receiver often lags (a message starts streaming
    into a new buffer before its receive is posted, then the receive takes the stream over).
    Every message must arrive whole, in order, with its own bytes."""
    import torch

    from pyc10d.core.tensor_bytes import byte_view

    t = TCPTransport(PrefixStore("b2b", ctx.store), ctx.rank, ctx.world_size, Deadline(30))
    n, count = 3 << 20, 12  # 12 MiB float32 messages
    buf = torch.empty(n)
    for i in range(count):
        if ctx.rank == 0:
            buf.fill_(float(i))
            buf[i] = -1.0  # a marker that moves, so a mixed-up message cannot pass
            t.send(1, 7, byte_view(buf), Deadline(30))
        else:
            t.recv(0, 7, byte_view(buf), Deadline(30))
            expected = torch.full((n,), float(i))
            expected[i] = -1.0
            assert torch.equal(buf, expected), i
    ctx.store.barrier("b2b-done", 2, 30)
    t.close()
    return count


def test_back_to_back_large_messages_arrive_whole_and_in_order():
    assert spawn(back_to_back_large, 2, timeout=60) == [12, 12]
