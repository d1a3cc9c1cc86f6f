"""TCPTransport.send_recv: the receive is posted before the send, on the calling thread.

Ring exchanges across processes (world sizes 2 and 3) check the bytes of small and large
messages; a pair of transports in one process checks the edges: a reply that arrived before the
call, a timeout, a size mismatch, a closed peer, bad arguments.
"""

from __future__ import annotations

import threading

import pytest

from pyc10d.core.errors import DistBackendError, TransportTimeout
from pyc10d.core.tags import op_tag
from pyc10d.core.timeouts import Deadline
from pyc10d.store import HashStore, PrefixStore
from pyc10d.testing import spawn, world_sizes
from pyc10d.transport import TCPTransport

from tests.helpers.transport import Background, payload

BIG = 16 * 1024 * 1024
SIZES = (0, 1000, BIG)


def pair(timeout: float = 10.0) -> tuple[TCPTransport, TCPTransport]:
    """Two connected transports in this process (ranks 0 and 1), built on threads."""
    store = HashStore()
    builders = [Background(TCPTransport, store, r, 2, Deadline(timeout)) for r in range(2)]
    return builders[0].result(), builders[1].result()


def ring(ctx) -> list[int]:
    """Each rank sends to its right and receives from its left, every size, twice."""
    t = TCPTransport(PrefixStore("tx", ctx.store), ctx.rank, ctx.world_size, Deadline(30))
    me, n = ctx.rank, ctx.world_size
    right, left = (me + 1) % n, (me - 1) % n
    checked = []
    try:
        for k, size in enumerate(SIZES * 2):
            out = bytearray(size)
            tag = op_tag(7, k)
            t.send_recv(
                right, tag, payload(me, right, size), left, tag, memoryview(out), Deadline(30)
            )
            assert out == payload(left, me, size), (k, size)
            checked.append(size)
        ctx.store.barrier("done", n, 30)
    finally:
        t.close()
    return checked


@world_sizes(2, 3)
def test_ring_exchange_delivers_every_size(world_size):
    assert spawn(ring, world_size, timeout=90) == [list(SIZES * 2)] * world_size


def test_to_itself_and_with_the_reply_already_buffered():
    a, b = pair()
    try:
        out = bytearray(5)
        a.send_recv(0, 1, b"hello", 0, 1, memoryview(out), Deadline(10))
        assert out == b"hello"
        b.send(0, 2, b"early", Deadline(10))  # arrives before a's receive is posted
        while not a._mb._unexpected:  # white-box: wait until it is buffered
            threading.Event().wait(0.001)
        got = bytearray(5)
        a.send_recv(1, 3, b"reply", 1, 2, memoryview(got), Deadline(10))
        assert got == b"early"
        echo = bytearray(5)
        b.recv(0, 3, memoryview(echo), Deadline(10))
        assert echo == b"reply"
    finally:
        a.close()
        b.close()


def test_both_directions_at_once_with_large_messages():
    a, b = pair()
    try:
        outs = [bytearray(BIG), bytearray(BIG)]
        other = Background(
            b.send_recv, 0, 5, payload(1, 0, BIG), 0, 5, memoryview(outs[1]), Deadline(30)
        )
        a.send_recv(1, 5, payload(0, 1, BIG), 1, 5, memoryview(outs[0]), Deadline(30))
        other.result(30)
        assert outs[0] == payload(1, 0, BIG)
        assert outs[1] == payload(0, 1, BIG)
    finally:
        a.close()
        b.close()


def test_a_missing_reply_times_out_and_is_withdrawn():
    a, b = pair()
    try:
        with pytest.raises(TransportTimeout) as info:
            a.send_recv(1, 8, b"x", 1, 9, memoryview(bytearray(4)), Deadline(0.2))
        assert info.value.ranks == (1,)
        assert not a._mb.has_posted(9)
        got = bytearray(1)
        b.recv(0, 8, memoryview(got), Deadline(10))  # the send went through
        assert got == b"x"
    finally:
        a.close()
        b.close()


def test_a_reply_of_another_size_fails():
    a, b = pair()
    try:
        b.send(0, 4, b"toolong", Deadline(10))
        with pytest.raises(DistBackendError, match="size mismatch"):
            a.send_recv(1, 4, b"x", 1, 4, memoryview(bytearray(3)), Deadline(10))
    finally:
        a.close()
        b.close()


def test_a_closed_peer_fails_the_call_without_waiting_out_the_deadline():
    a, b = pair()
    try:
        b.close()
        call = Background(a.send_recv, 1, 6, b"x", 1, 6, memoryview(bytearray(1)), Deadline(300))
        with pytest.raises(DistBackendError):
            call.result(60)
    finally:
        a.close()


def test_bad_arguments_fail_before_anything_is_posted():
    a, b = pair()
    try:
        with pytest.raises(ValueError, match="out of range"):
            a.send_recv(2, 1, b"x", 1, 1, memoryview(bytearray(1)), Deadline(10))
        with pytest.raises(ValueError, match="out of range"):
            a.send_recv(1, 1, b"x", -1, 1, memoryview(bytearray(1)), Deadline(10))
        with pytest.raises(ValueError, match="read-only"):
            a.send_recv(1, 1, b"x", 1, 1, memoryview(b"y"), Deadline(10))
        assert not a._mb.has_posted(1)
    finally:
        a.close()
        b.close()
