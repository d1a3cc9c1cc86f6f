"""Helpers shared by the transport tests: payload patterns, background calls, posted receives."""

from __future__ import annotations

import random
import threading
import time

from pyc10d.core.timeouts import Deadline

_pattern: bytes | None = None


def payload(src: int, dst: int, size: int) -> bytes:
    """Pseudo-random bytes, different for each (src, dst) pair."""
    global _pattern
    if _pattern is None or len(_pattern) < size + 4096:
        _pattern = random.Random(1234).randbytes(max(size, 1024 * 1024) + 4096)
    offset = (src * 131 + dst * 17) % 4096
    return _pattern[offset : offset + size]


def wait_posted(t, tag: int, seconds: float = 20.0) -> None:
    """Poll until a receive for ``tag`` is posted on ``t`` (white-box, for the posted path)."""
    deadline = Deadline(seconds)
    while not t._mb.has_posted(tag):
        assert not deadline.expired(), f"receive for tag {tag} never got posted"
        time.sleep(0.001)


class Background:
    """Run ``fn`` on a thread; ``result()`` joins it and returns its value or raises its error."""

    def __init__(self, fn, *args) -> None:
        self._value = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn, *args) -> None:
        try:
            self._value = fn(*args)
        except BaseException as exc:
            self._error = exc

    def result(self, timeout: float = 30.0):
        """The call's value (or its exception), waiting at most ``timeout`` seconds."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not finish"
        if self._error is not None:
            raise self._error
        return self._value
