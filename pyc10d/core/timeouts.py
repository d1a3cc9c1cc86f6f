"""Timeouts: users give a timedelta (or seconds), the group turns it into one :class:`Deadline`
per operation, and every layer below waits on that Deadline (messages print it in ms, as torch)."""

from __future__ import annotations

import time
from datetime import timedelta

TimeoutLike = timedelta | float | int

DEFAULT_PG_TIMEOUT = timedelta(minutes=30)
"""The timeout of a group, and of rendezvous, when none is given (torch's default_pg_timeout)."""


def to_timedelta(timeout: TimeoutLike, what: str = "timeout") -> timedelta:
    """Return ``timeout`` as a non-negative timedelta; ValueError naming ``what`` otherwise."""
    if isinstance(timeout, timedelta):
        value = timeout
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        value = timedelta(seconds=timeout)
    else:
        raise TypeError(f"{what} must be a datetime.timedelta, got {type(timeout).__name__}")
    if value < timedelta(0):
        raise ValueError(f"{what} must be non-negative, got {value!r}")
    return value


def to_seconds(timeout: TimeoutLike, what: str = "timeout") -> float:
    """Return ``timeout`` as non-negative float seconds (validated like ``to_timedelta``)."""
    return to_timedelta(timeout, what).total_seconds()


def format_ms(seconds: float) -> str:
    """Format a duration as torch does in its timeout messages, e.g. ``1500ms``."""
    return f"{round(seconds * 1000)}ms"


class Deadline:
    """A point in monotonic time, ``timeout`` (a timedelta or seconds) from now.

    ``remaining()`` counts down to zero; ``seconds`` is the whole span, for messages.
    ``Deadline(0)`` never expires: like torch's ``kNoTimeout``, a zero store timeout waits forever.
    """

    __slots__ = ("at", "seconds")

    def __init__(self, timeout: TimeoutLike) -> None:
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        self.seconds = seconds
        self.at = time.monotonic() + seconds if seconds > 0 else float("inf")

    def remaining(self) -> float:
        """Seconds left before the deadline, never negative (``inf`` for no timeout)."""
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        """True once the deadline has passed."""
        return time.monotonic() >= self.at
