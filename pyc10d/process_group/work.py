"""``Work``: the handle an asynchronous collective returns (torch's ``c10d::Work``)."""

from __future__ import annotations

import threading
from typing import Any

import torch

from .._timeouts import TimeoutLike, format_ms, to_seconds
from ..errors import DistBackendError


class Work:
    """Completion handle of one operation: ``wait()``, ``is_completed()``, ``get_future()``...

    ``get_future()`` returns a ``torch.futures.Future`` completed with what torch's Gloo backend
    puts there: the output tensors of the operation.
    """

    def __init__(self, op_type: str, seq: int, outputs: list[Any]) -> None:
        self.op_type = op_type
        self.seq = seq
        self._outputs = outputs
        self._future: torch.futures.Future = torch.futures.Future()
        self._done = threading.Event()
        self._exception: BaseException | None = None
        self._source = -1  # the sender, for receives

    # -- completion (called by the engine) ------------------------------------------------------
    def _complete(self, value: Any) -> None:
        self._done.set()
        self._future.set_result(value)

    def _fail(self, exc: BaseException) -> None:
        self._exception = exc
        self._done.set()
        self._future.set_exception(exc)

    # -- torch's Work API ---------------------------------------------------------------------
    def wait(self, timeout: TimeoutLike | None = None) -> bool:
        """Block until the operation finishes; re-raise its error. ``timeout`` bounds the wait."""
        if timeout is None or to_seconds(timeout) == 0:
            self._done.wait()
        elif not self._done.wait(to_seconds(timeout)):
            raise DistBackendError(
                f"Timed out waiting {format_ms(to_seconds(timeout))} for {self.op_type} "
                f"(collective #{self.seq}) to complete"
            )
        if self._exception is not None:
            raise self._exception
        return True

    def is_completed(self) -> bool:
        """True once the operation finished, successfully or not."""
        return self._done.is_set()

    def is_success(self) -> bool:
        """True if the operation finished without error."""
        return self._done.is_set() and self._exception is None

    def exception(self) -> BaseException | None:
        """The error the operation failed with, or None."""
        return self._exception

    def get_future(self) -> torch.futures.Future:
        """A ``torch.futures.Future`` completed with the operation's output tensors."""
        return self._future

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
        state = "done" if self.is_completed() else "pending"
        return f"<pyc10d.Work {self.op_type} #{self.seq} {state}>"
