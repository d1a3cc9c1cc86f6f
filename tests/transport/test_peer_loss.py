"""A lost peer fails only what needs it: messages already sent by it, and the other ranks'
messages, are still delivered (TCPTransport and HybridTransport).

Rank 2 sends rank 0 one message and exits at once (``os._exit``, in a forked child). Rank 0
still receives that message (over TCP: the bytes come before the end of the stream; a
HybridTransport's ring is read by another thread than the TCP socket that reports the loss, so
there rank 2 waits until rank 0 has it); what only rank 2 could send fails, naming it, as do
sends to it.
Rank 1's receive from rank 0, posted before the loss, and rank 0's receive of a message rank 1
sends only after both saw the loss, complete: the ranks still there finish what they were
doing together (a rank that exits right after a collective returned does not fail it for them).

Without that wait (a HybridTransport whose same-host peer sends its last message through its
ring and exits at once), the loss seen on TCP must not fail a receive its ring still serves:
:func:`test_last_words_through_a_ring_survive_an_abrupt_exit` makes the loss come first.
"""

from __future__ import annotations

import os
import threading
import traceback

import pytest

from pyc10d.core.errors import PeerFailedError
from pyc10d.core.tags import p2p_tag
from pyc10d.core.timeouts import Deadline
from pyc10d.store import PrefixStore
from pyc10d.testing import spawn
from pyc10d.transport import HybridTransport, TCPTransport

from tests.helpers.transport import Background, wait_posted

LAST, GONE, LATE, POSTED = (p2p_tag(k) for k in range(1, 5))


def _make(ctx, kind: str):
    store = PrefixStore("tx", ctx.store)
    if kind == "tcp":
        return TCPTransport(store, ctx.rank, ctx.world_size, Deadline(30))
    return HybridTransport(store, ctx.rank, ctx.world_size, Deadline(30), shm_peers="all")


def _victim(ctx, kind: str) -> int:
    """Rank 2: in a child, send rank 0 its last message and exit at once; the exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            t = _make(ctx, kind)  # kept referenced: dropping it would close it cleanly
            ctx.store.wait(["posted"], 30)
            t.send(0, LAST, b"last words", Deadline(10))
            if kind == "hybrid":  # its ring is read by another thread than its TCP end
                ctx.store.wait(["got last"], 30)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def lost_peer(ctx, kind: str) -> object:
    if ctx.rank == 2:
        return _victim(ctx, kind)
    t = _make(ctx, kind)
    if ctx.rank == 0:
        assert t.recv_bytes(2, LAST, Deadline(30)) == b"last words"  # sent before it exited
        ctx.store.set("got last", "1")
    else:
        pending = Background(t.recv_bytes, 0, POSTED, Deadline(30))
        wait_posted(t, POSTED)
        ctx.store.set("posted", "1")
    with pytest.raises(PeerFailedError, match="rank 2 lost") as info:
        t.recv_bytes(2, GONE, Deadline(30))
    assert info.value.peer == 2
    with pytest.raises(PeerFailedError, match="rank 2 lost"):
        t.send(2, GONE, b"x", Deadline(5))
    assert t.error is None  # the transport still serves the ranks left
    if ctx.rank == 0:
        assert t.recv_bytes(1, LATE, Deadline(30)) == b"after the loss"
        t.send(1, POSTED, b"posted before the loss", Deadline(10))
        result = "ok"
    else:
        t.send(0, LATE, b"after the loss", Deadline(10))
        result = pending.result()
    t.close()
    return result


@pytest.mark.parametrize("kind", ["tcp", "hybrid"])
def test_lost_peer_fails_only_what_needs_it(kind):
    results = spawn(lost_peer, 3, args=(kind,), timeout=60)
    assert results == ["ok", b"posted before the loss", 0]


ROUNDS = 3


def _abrupt_victim(store, rank: int, world_size: int) -> int:
    """In a child, send every other rank a last message through its ring and exit at once (no
    waiting for them to read it); the child's exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            t = HybridTransport(store, rank, world_size, Deadline(30), shm_peers="all")
            store.wait([f"posted/{r}" for r in range(world_size) if r != rank], 30)
            for peer in range(world_size):
                if peer != rank:
                    t.send(peer, LAST, b"last words", Deadline(10))
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _loss_first(t: HybridTransport, victim: int) -> threading.Event:
    """Make ``t``'s ring thread hand over a LAST message only after the TCP thread has reported
    the loss of ``victim`` (up to 10 s): the race at its worst, every time. The event says
    whether the loss came first."""
    mb, receiver = t._mb, t._res.receiver
    seen, offer, closed = threading.Event(), receiver._offer, mb.peer_closed

    def peer_closed(peer: int, *args, **kwargs) -> None:
        if peer == victim:
            seen.set()
        closed(peer, *args, **kwargs)

    def late_offer(src: int, tag: int, payload) -> None:
        if tag == LAST:
            seen.wait(10)
        offer(src, tag, payload)

    mb.peer_closed, receiver._offer = peer_closed, late_offer
    return seen


def abrupt_exit(ctx) -> list:
    """Rounds of: the last rank sends every other rank a message through its ring and exits at
    once; each of them, its receive posted before, sees the loss first (see :func:`_loss_first`)
    and still gets the message, then finds the rank lost."""
    victim = ctx.world_size - 1
    outcomes = []
    for round_ in range(ROUNDS):
        store = PrefixStore(f"abrupt/{round_}", ctx.store)
        if ctx.rank == victim:
            outcomes.append(_abrupt_victim(store, victim, ctx.world_size))
            continue
        t = HybridTransport(store, ctx.rank, ctx.world_size, Deadline(30), shm_peers="all")
        loss_first = _loss_first(t, victim)
        last = Background(t.recv_bytes, victim, LAST, Deadline(30))
        wait_posted(t, LAST)
        store.set(f"posted/{ctx.rank}", "1")
        try:
            outcomes.append(last.result())
        except PeerFailedError as exc:  # the loss overtook the message: the defect
            outcomes.append(f"round {round_}: {exc}")
        with pytest.raises(PeerFailedError, match=f"rank {victim} lost"):
            t.recv_bytes(victim, GONE, Deadline(30))
        assert loss_first.is_set()
        t.close()
    return outcomes


@pytest.mark.parametrize("world_size", [2, 3])
def test_last_words_through_a_ring_survive_an_abrupt_exit(world_size):
    results = spawn(abrupt_exit, world_size, timeout=120)
    assert results[-1] == [0] * ROUNDS
    for rank in range(world_size - 1):
        assert results[rank] == [b"last words"] * ROUNDS, (rank, results[rank])
