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

    def wait_turn(self, seq: int, deadline: Deadline) -> None:
        """Return once every collective issued before ``seq`` has finished."""
        with self._cv:
            while self._finished_upto < seq - 1:
                remaining = deadline.remaining()
                if remaining <= 0:
                    raise TransportTimeout(
                        f"the collectives issued before #{seq} to finish", deadline.seconds
                    )
                self._cv.wait(min(remaining, _POLL_S))

    def finish(self, seq: int) -> None:
        """Record that collective ``seq`` finished (successfully or not)."""
        with self._cv:
            self._finished_later.add(seq)
            while self._finished_upto + 1 in self._finished_later:
                self._finished_upto += 1
                self._finished_later.discard(self._finished_upto)
            self._cv.notify_all()
