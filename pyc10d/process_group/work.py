"""``Work``: the handle an asynchronous collective returns (torch's ``c10d::Work``)."""

from __future__ import annotations

import _thread
import threading
from collections.abc import Callable
from typing import Any

import torch

from ..core.errors import DistBackendError
from ..core.timeouts import TimeoutLike, format_ms, to_seconds
from . import flight_recorder as _fr


class Work:
    """Completion handle of one operation: ``wait()``, ``is_completed()``, ``get_future()``...

    ``get_future()`` returns a ``torch.futures.Future`` completed with what torch's Gloo backend
    puts there: the output tensors of the operation.

    Each Work of a group is an entry of the flight recorder (see
    :mod:`pyc10d.process_group.flight_recorder`): "scheduled" when made, "started" when the
    engine calls :meth:`_start`, "completed" when it succeeds. The keyword arguments describe
    the operation for it: ``group`` (the ProcessGroup; None: not recorded), ``inputs`` (None:
    the outputs), ``timeout`` and ``peer`` (the other rank of a send or receive).
    """

    def __init__(
        self,
        op_type: str,
        seq: int,
        outputs: list[Any],
        *,
        group: Any = None,
        inputs: Any = None,
        timeout: Any = None,
        peer: int | None = None,
    ) -> None:
        self.op_type = op_type
        self.seq = seq
        self._outputs = outputs
        self._future: torch.futures.Future | None = None  # made on first get_future()
        self._value: Any = None
        self._done = False
        self._gate = _thread.allocate_lock()  # held until done; waiters pass it on
        self._gate.acquire()
        self._lock = threading.Lock()
        self._exception: BaseException | None = None
        self._source = -1  # the sender, for receives
        # (work, run_here): runs the still-queued operation inline, or wakes its engine
        self._steal: Callable[[Work, bool], object] | None = None
        recorder = _fr.current()
        self._fr_entry: _fr.Entry | None = None
        if recorder is not None and group is not None:  # others: no group's operation
            self._fr_entry = recorder.record(group, op_type, seq, inputs, outputs, timeout, peer)

    # -- completion (called by the engine) ------------------------------------------------------
    def _start(self) -> None:
        """The operation begins running: the flight recorder's "started" (torch's
        ``time_discovered_started_ns``)."""
        entry = self._fr_entry
        if entry is not None:
            entry.start()

    def _complete(self, value: Any) -> None:
        self._finish(value, None)

    def _fail(self, exc: BaseException) -> None:
        self._finish(None, exc)

    def _finish(self, value: Any, exc: BaseException | None) -> None:
        entry = self._fr_entry
        if entry is not None:  # first: a timeout's dump is written before anyone sees the error
            self._fr_entry = None
            if exc is None:
                entry.complete()
            else:
                _fr.failed(entry, exc)
        with self._lock:
            self._value, self._exception, self._done = value, exc, True
            future = self._future
        self._gate.release()
        if future is None:
            return
        if exc is None:
            future.set_result(value)
        else:
            future.set_exception(exc)

    def _run_queued(self, run_here: bool = True) -> None:
        """If the operation still waits in its engine's queue, run it in this thread (or, with
        ``run_here=False``, make sure a worker runs it)."""
        steal, self._steal = self._steal, None
        if steal is not None and not self._done:
            steal(self, run_here)

    def _wait_done(self, seconds: float | None) -> bool:
        """Block until done (at most ``seconds``); True if it is."""
        if self._done:
            return True
        if not self._gate.acquire(timeout=-1 if seconds is None else seconds):
            return False
        self._gate.release()  # let the next waiter through
        return True

    # -- torch's Work API ---------------------------------------------------------------------
    def wait(self, timeout: TimeoutLike | None = None) -> bool:
        """Block until the operation finishes; re-raise its error. ``timeout`` bounds the wait."""
        if self._done:
            pass
        elif timeout is None or to_seconds(timeout) == 0:
            self._run_queued()
            self._wait_done(None)
        elif not (self._run_queued(run_here=False) or self._wait_done(to_seconds(timeout))):
            raise DistBackendError(
                f"Timed out waiting {format_ms(to_seconds(timeout))} for {self.op_type} "
                f"(collective #{self.seq}) to complete"
            )
        if self._exception is not None:
            raise self._exception
        return True

    def _rush(self) -> None:
        """Someone looks at the operation without waiting for it: if it is still queued
        (deferred by its engine), have a worker start it now."""
        if self._steal is not None and not self._done:
            self._run_queued(run_here=False)

    def is_completed(self) -> bool:
        """True once the operation finished, successfully or not (a still-queued operation is
        started by a worker, so polling makes progress)."""
        if not self._done:
            self._rush()
        return self._done

    def is_success(self) -> bool:
        """True if the operation finished without error."""
        return self.is_completed() and self._exception is None

    def exception(self) -> BaseException | None:
        """The error the operation failed with, or None."""
        if not self._done:
            self._rush()
        return self._exception

    def get_future(self) -> torch.futures.Future:
        """A ``torch.futures.Future`` completed with the operation's output tensors (a
        still-queued operation is started by a worker, so callbacks run without a wait)."""
        self._rush()
        return self._future_of()

    def _future_of(self) -> torch.futures.Future:
        """:meth:`get_future` without starting the operation early."""
        with self._lock:
            if self._future is not None:
                return self._future
            future = self._future = torch.futures.Future()
            done, value, exc = self._done, self._value, self._exception
        if done:
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(value)
        return future

    def result(self) -> list[Any]:
        """The operation's output tensors (torch's ``Work.result()``: one list, not lists)."""
        self.wait()
        if len(self._outputs) > 1:
            raise RuntimeError(
                "work result does not support list of lists, use .get_future() and value()"
            )
        return self._outputs[0] if self._outputs else []

    def source_rank(self) -> int:
        """For ``recv_anysource``: the rank the message came from."""
        self.wait()
        return self._source

    def _source_rank(self) -> int:
        """torch's private spelling of :meth:`source_rank` (used by its any-source tests)."""
        return self.source_rank()

    def synchronize(self) -> None:
        """No-op on CPU (there is no device stream to synchronize with)."""

    def __repr__(self) -> str:
        state = "done" if self._done else "pending"
        return f"<pyc10d.Work {self.op_type} #{self.seq} {state}>"
