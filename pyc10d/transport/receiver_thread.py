"""The thread every transport receives on: started once, stopped once, cleaned up after it exits.

:class:`ReceiverThread` holds what the TCP and shared-memory receivers share: the daemon thread,
its stop handshake and the crash path. ``stop`` from another thread wakes the receiver, joins it
(for at most :data:`JOIN_TIMEOUT_S`) and runs the cleanup; from the receiver thread itself (a
garbage-collection finalizer that ran there) it leaves the cleanup to the thread as it exits.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable

JOIN_TIMEOUT_S = 10.0
"""How long ``stop`` waits for the receiver thread to exit."""


class ReceiverThread(abc.ABC):
    """A daemon thread running :meth:`_loop` until a stop request or a failure ends it."""

    def __init__(self, name: str) -> None:
        self._after_exit: Callable[[], None] | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self.thread.start()

    @abc.abstractmethod
    def wake(self) -> None:
        """Make the thread look at its inputs (and a stop request) now."""

    @abc.abstractmethod
    def _loop(self) -> None:
        """Receive until stopped or failed."""

    @abc.abstractmethod
    def _crashed(self, exc: BaseException) -> None:
        """Fail the mailbox after ``_loop`` raised ``exc`` (a bug: waiters must not hang)."""

    @abc.abstractmethod
    def _exiting(self) -> None:
        """Last words of the thread (after ``_loop`` ended, before the cleanup runs)."""

    def _stop_thread(self, after_exit: Callable[[], None]) -> None:
        """Wake and join the thread (subclasses have recorded the stop request), then run
        ``after_exit``; on the thread itself, have it run ``after_exit`` as it exits."""
        if threading.current_thread() is self.thread:
            self._after_exit = after_exit
            self.wake()
            return
        self.wake()
        if self.thread.ident is not None:
            self.thread.join(JOIN_TIMEOUT_S)
        if not self.thread.is_alive():
            after_exit()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            self._crashed(exc)
        finally:
            self._exiting()
            if self._after_exit is not None:
                self._after_exit()
