"""HybridTransport over shared memory: exchanges, matching, errors, peer failure, threads, cleanup.

Rank bodies are module-level functions (the ranks of ``spawn`` import this module by name). After
every run no ``pyc10d`` segment may be left in ``/dev/shm``.
"""

from __future__ import annotations

import os
import threading
import time
import traceback

import pytest

from pyc10d.core.errors import PeerFailedError, TransportTimeout
from pyc10d.core.tags import op_tag, p2p_tag
from pyc10d.core.timeouts import Deadline
from pyc10d.store import PrefixStore
from pyc10d.testing import spawn, world_sizes
from pyc10d.transport import HybridTransport, TCPTransport, make_transport
from pyc10d.transport.base import HEADER
from pyc10d.transport.shm.ring import CAPACITY

from tests.helpers.transport import Background, payload, wait_posted

BIG = 20 * 1024 * 1024


# -- helpers --------------------------------------------------------------------------------------
def make(ctx, timeout: float = 30.0) -> HybridTransport:
    t = HybridTransport(
        PrefixStore("tx", ctx.store), ctx.rank, ctx.world_size, Deadline(timeout), shm_peers="all"
    )
    assert len(t.shm_peers) == ctx.world_size - 1
    return t


def shm_leftovers() -> list[str]:
    """``pyc10d`` segments in /dev/shm that stay there (other groups' brief setups excepted)."""
    first = {n for n in os.listdir("/dev/shm") if "pyc10d" in n}
    if first:
        time.sleep(0.5)
        first &= set(os.listdir("/dev/shm"))
    return sorted(first)


def run(fn, world_size: int) -> list:
    results = spawn(fn, world_size, timeout=60)
    assert shm_leftovers() == []
    return results


def shm_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("pyc10d-shm-recv")]


# -- exchanges ------------------------------------------------------------------------------------
def all_to_all(ctx) -> int:
    t = make(ctx)
    names = [r.name for r in t._res.setup.incoming.values()]
    assert not [n for n in names if os.path.exists(f"/dev/shm/{n}")]  # unlinked at setup
    me, n = ctx.rank, ctx.world_size
    sizes = [0, 5, BIG]
    assert BIG > CAPACITY
    checked = 0
    for i, size in enumerate(sizes):
        tag = op_tag(1, i)
        sends = [Background(t.send, p, tag, payload(me, p, size), Deadline(30)) for p in range(n)]
        for p in range(n):
            out = bytearray(size)
            t.recv(p, tag, memoryview(out), Deadline(30))
            assert out == payload(p, me, size), (p, size)
            checked += 1
        for s in sends:
            s.result()
    ctx.store.barrier("done", n, 30)
    t.close()
    assert shm_threads() == []
    return checked


@world_sizes(2, 3)
def test_every_rank_exchanges_0_small_and_20mib_messages(world_size):
    assert run(all_to_all, world_size) == [3 * world_size] * world_size


def fifo_and_paths(ctx) -> list[str]:
    t = make(ctx)
    seen = []
    if ctx.rank == 0:
        for i in range(200):
            t.send(1, p2p_tag(7), i.to_bytes(4, "little"), Deadline(30))
        t.send(1, p2p_tag(8), payload(0, 1, 3 * CAPACITY), Deadline(30))  # unexpected, big
        ctx.store.wait(["posted"], 30)
        t.send(1, p2p_tag(9), payload(1, 0, 5 * CAPACITY + 3), Deadline(30))
    else:
        ctx.store.set("x", "1")
        got = [
            int.from_bytes(t.recv_bytes(0, p2p_tag(7), Deadline(30)), "little") for _ in range(200)
        ]
        if got == list(range(200)):
            seen.append("fifo")
        out = bytearray(3 * CAPACITY)
        t.recv(0, p2p_tag(8), memoryview(out), Deadline(30))
        if out == payload(0, 1, 3 * CAPACITY):
            seen.append("unexpected")
        out = bytearray(5 * CAPACITY + 3)
        pending = Background(t.recv, 0, p2p_tag(9), memoryview(out), Deadline(30))
        wait_posted(t, p2p_tag(9))
        ctx.store.set("posted", "1")
        pending.result()
        if out == payload(1, 0, 5 * CAPACITY + 3):
            seen.append("posted")
    ctx.store.barrier("done", 2, 30)
    t.close()
    return seen


def test_fifo_order_and_both_receive_paths():
    assert run(fifo_and_paths, 2) == [[], ["fifo", "unexpected", "posted"]]


def matching(ctx) -> str:
    t = make(ctx)
    me = ctx.rank
    tag = p2p_tag(3)
    if me == 0:
        out = bytearray(8)
        got = {t.recv_any([1, 2], tag, memoryview(out), Deadline(30)) for _ in range(2)}
        assert got == {1, 2}
        assert t.recv_bytes(1, p2p_tag(4), Deadline(30)) == b"any size at all"
        t.send(0, p2p_tag(5), b"self", Deadline(5))
        assert t.recv_bytes(0, p2p_tag(5), Deadline(5)) == b"self"
    else:
        t.send(0, tag, me.to_bytes(8, "little"), Deadline(30))
        if me == 1:
            t.send(0, p2p_tag(4), b"any size at all", Deadline(30))
    ctx.store.barrier("done", 3, 30)
    t.close()
    return "ok"


def test_recv_any_recv_bytes_and_self_sends():
    assert run(matching, 3) == ["ok"] * 3


def timeouts(ctx) -> str:
    t = make(ctx)
    size = 3 * CAPACITY
    if ctx.rank == 0:
        start = time.monotonic()
        with pytest.raises(TransportTimeout, match=r"for rank 1 \(its message of send/recv tag 1"):
            t.recv(1, p2p_tag(1), memoryview(bytearray(4)), Deadline(0.2))
        assert 0.15 < time.monotonic() - start < 5
        ctx.store.set("go", "1")
        out = bytearray(size)  # rank 1 stalls midway: the receive is withdrawn while filling
        with pytest.raises(TransportTimeout, match=r"for rank 1 \(its message of send/recv tag 2"):
            t.recv(1, p2p_tag(2), memoryview(out), Deadline(1.0))
        assert t.error is None
        ctx.store.set("timed-out", "1")
        assert t.recv_bytes(1, p2p_tag(3), Deadline(30)) == b"in sync"
    else:
        w = t._writers[0]  # white-box: publish a header and half of the payload, then stall
        body = memoryview(payload(1, 0, size))
        ctx.store.wait(["go"], 30)
        with w.lock:
            w._put(memoryview(HEADER.pack(p2p_tag(2), size)), None, Deadline(10))
            w._put(body[: CAPACITY // 2], None, Deadline(10))
            w._publish()
            ctx.store.wait(["timed-out"], 30)
            w._put(body[CAPACITY // 2 :], None, Deadline(10))
            w._publish()
        t.send(0, p2p_tag(3), b"in sync", Deadline(10))
    ctx.store.barrier("done", 2, 30)
    t.close()
    return "ok"


def test_recv_timeout():
    assert run(timeouts, 2) == ["ok"] * 2


# -- failure ---------------------------------------------------------------------------------------
def peer_dies(ctx) -> object:
    store = ctx.store
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
    assert info.value.peer == 2 and time.monotonic() - start < 10
    with pytest.raises(PeerFailedError, match="rank 2"):
        t.send(2, p2p_tag(2), b"x", Deadline(5))
    with pytest.raises(PeerFailedError, match="rank 2"):
        t.recv(2, p2p_tag(3), memoryview(bytearray(1)), Deadline(5))
    t.close()
    assert shm_threads() == []
    return "failed"


def test_peer_exit_fails_pending_and_later_calls():
    assert run(peer_dies, 3) == ["failed", "failed", 0]


def concurrent_threads(ctx) -> int:
    t = make(ctx)
    me, peer = ctx.rank, 1 - ctx.rank
    sizes = [1, 4096, 70_000, 400_000, 0, CAPACITY + 5]

    def worker(k: int) -> int:
        for i in range(20):
            size = sizes[(i + k) % len(sizes)]
            if me == 0:
                t.send(peer, p2p_tag(k), payload(k, i, size), Deadline(30))
                echo = t.recv_bytes(peer, p2p_tag(100 + k), Deadline(30))
                assert echo == payload(k, i, size)
            else:
                out = bytearray(size)
                t.recv(peer, p2p_tag(k), memoryview(out), Deadline(30))
                t.send(peer, p2p_tag(100 + k), out, Deadline(30))
        return 20

    workers = [Background(worker, k) for k in range(4)]
    done = sum(w.result(60) for w in workers)
    ctx.store.barrier("done", 2, 30)
    t.close()
    return done


def test_threads_send_and_receive_concurrently():
    assert run(concurrent_threads, 2) == [80, 80]


# -- selection -------------------------------------------------------------------------------------
def factory(ctx) -> list[str]:
    kinds = []
    for mode in ("tcp", "auto", "shm"):
        os.environ["PYC10D_TRANSPORT"] = mode
        t = make_transport(PrefixStore(mode, ctx.store), ctx.rank, ctx.world_size, Deadline(30))
        kinds.append(type(t).__name__)
        t.send(1 - ctx.rank, 5, mode.encode(), Deadline(10))
        assert t.recv_bytes(1 - ctx.rank, 5, Deadline(10)) == mode.encode()
        ctx.store.barrier(f"done-{mode}", 2, 30)
        t.close()
    return kinds


def test_make_transport_follows_the_environment():
    kinds = ["TCPTransport", "TCPTransport", "HybridTransport"]  # auto: TCP messages + arena
    assert run(factory, 2) == [kinds, kinds]
    assert TCPTransport.__name__ == kinds[0]
