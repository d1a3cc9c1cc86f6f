"""``IssueOrder``: lets collectives into a shared resource one at a time, in issue order."""

from __future__ import annotations

import threading

from ..core.errors import TransportTimeout
from ..core.timeouts import Deadline

_POLL_S = 1.0  # the longest sleep between looks at the deadline


class IssueOrder:
    """Tracks which collective sequence numbers have finished (every one must be finished)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._finished_upto = 0  # every seq <= this one has finished
        self._finished_later: set[int] = set()
        self._waiters = 0  # threads in wait_turn (finish() notifies only when there are)

    def is_turn(self, seq: int) -> bool:
        """Whether every collective issued before ``seq`` has finished (it stays true)."""
        return self._finished_upto >= seq - 1

    def wait_turn(self, seq: int, deadline: Deadline) -> None:
        """Return once every collective issued before ``seq`` has finished."""
        if self._finished_upto >= seq - 1:  # only ever grows: no lock needed to see it
            return
        with self._cv:
            self._waiters += 1
            try:
                while self._finished_upto < seq - 1:
                    remaining = deadline.remaining()
                    if remaining <= 0:
                        raise TransportTimeout(
                            f"the collectives issued before #{seq} to finish", deadline.seconds
                        )
                    self._cv.wait(min(remaining, _POLL_S))
            finally:
                self._waiters -= 1

    def finish(self, seq: int) -> None:
        """Record that collective ``seq`` finished (successfully or not)."""
        with self._cv:
            if seq == self._finished_upto + 1 and not self._finished_later:
                self._finished_upto = seq  # the usual case: the oldest one finished
            else:
                self._finished_later.add(seq)
                while self._finished_upto + 1 in self._finished_later:
                    self._finished_upto += 1
                    self._finished_later.discard(self._finished_upto)
            if self._waiters:
                self._cv.notify_all()
