"""A rank completing a collective right at a peer's deadline waits for the peer's word.

:meth:`MailboxTransport.abandoned` is called as a collective completes. Far from every peer's
deadline it answers at once; within the late window of one it waits (until that deadline plus
the window) for those peers' "abandoned" message, and returns it if one comes. The whole race
over TCP is in tests/process_group/test_consistency.py; here the decision itself, on a
transport whose mailbox is fed by hand.
"""

from __future__ import annotations

import threading
import time
import weakref

import pytest

from pyc10d.core.errors import CollectiveAbandonedError, PeerFailedError
from pyc10d.core.tags import abandon_tag
from pyc10d.transport.mailbox import Mailbox, abandon_payload
from pyc10d.transport.mailbox_transport import (
    LATE_MAX_S,
    LATE_MIN_S,
    MailboxTransport,
    late_window,
)

from tests.helpers.transport import Background

SEQ = 7


class HandFed(MailboxTransport):
    """A MailboxTransport of rank 0 of ``world_size`` whose messages arrive by :meth:`feed`."""

    def __init__(self, world_size: int) -> None:
        self.rank, self.world_size = 0, world_size
        self._mb = Mailbox()
        self._finalizer = weakref.finalize(self, lambda: None)

    def send(self, dst, tag, data, deadline) -> None:
        """Sends go nowhere."""

    def feed_abandon(self, src: int, seq: int) -> None:
        with self._mb.lock:
            self._mb.offer(src, abandon_tag(seq), abandon_payload("it timed out", [0], 1.0))


def test_late_window_scales_with_the_timeout_within_bounds():
    assert late_window(0.01) == LATE_MIN_S
    assert late_window(1.0) == 0.25
    assert late_window(3600.0) == LATE_MAX_S


def test_far_from_every_deadline_it_answers_at_once(monkeypatch):
    t = HandFed(3)
    monkeypatch.setattr(t._mb, "wait_first_abandon", lambda *a: pytest.fail("it waited"))
    now = time.time()
    t.expect_deadlines(SEQ, [now + 100, now + 50], 100.0)
    assert t.abandoned(SEQ) is None
    assert not t._late  # taken at completion
    t.expect_deadlines(SEQ + 1, [float("inf"), float("inf")], 0.0)  # no timeout: never late
    assert t.abandoned(SEQ + 1) is None


def test_near_a_deadline_it_waits_for_those_peers_until_that_deadline_plus_the_window(
    monkeypatch,
):
    t = HandFed(4)
    calls = []
    monkeypatch.setattr(t._mb, "wait_first_abandon", lambda *a: calls.append(a))
    now = time.time()
    window = late_window(1.0)
    # rank 1: far; rank 2: just past its deadline; rank 3: within the window of it
    t.expect_deadlines(SEQ, [now + 100, now - 0.01, now + 0.02], 1.0)
    assert t.abandoned(SEQ) is None
    [(seq, peers, seconds)] = calls
    assert (seq, peers) == (SEQ, [2, 3])
    assert window <= seconds <= 0.02 + window


def test_a_word_already_here_is_returned_without_waiting(monkeypatch):
    t = HandFed(2)
    monkeypatch.setattr(t._mb, "wait_first_abandon", lambda *a: pytest.fail("it waited"))
    t.expect_deadlines(SEQ, [time.time()], 1.0)
    t.feed_abandon(1, SEQ)
    err = t.abandoned(SEQ)
    assert isinstance(err, CollectiveAbandonedError) and err.peer == 1


def test_the_word_arriving_during_the_wait_is_returned():
    t = HandFed(2)
    t.expect_deadlines(SEQ, [time.time() + 0.5], 120.0)  # within its 1 s window: it waits
    feeder = threading.Thread(target=t.feed_abandon, args=(1, SEQ))
    feeder.start()
    err = t.abandoned(SEQ)
    feeder.join()
    assert isinstance(err, CollectiveAbandonedError) and err.peer == 1


def test_the_wait_ends_when_the_awaited_peers_are_gone():
    t = HandFed(3)
    waiting = Background(t._mb.wait_first_abandon, SEQ, [1, 2], 600.0)
    with t._mb.lock:
        t._mb.peer_closed(1, PeerFailedError(1, "it exited"), lost=True)
        t._mb.peer_closed(2, PeerFailedError(2, "it exited"), lost=True)
    assert waiting.result(timeout=30) is None  # nothing more comes from them: no 600 s wait


def test_entries_of_collectives_that_never_completed_are_bounded():
    t = HandFed(2)
    for seq in range(5000):
        t.expect_deadlines(seq, [time.time() + 100], 100.0)
    assert len(t._late) <= 1024
    t.discard(4999)
    assert 4999 not in t._late
