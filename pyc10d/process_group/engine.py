"""The async engine: operations start in issue order, up to ``threads`` of them at a time.

Calls return a :class:`Work` at once; worker threads run the operations. Each operation has its
own message tags, so concurrent ones never mix messages (see ``transport.base.op_tag``).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from ..core.errors import DistBackendError
from .work import Work


class Engine:
    """A FIFO of operations served by ``threads`` daemon worker threads."""

    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self._queue: collections.deque[tuple[Work, Callable[[], Any]]] = collections.deque()
        self._cv = threading.Condition()
        self._stopped = False
        self._workers = [
            threading.Thread(target=self._loop, name=f"{name}-worker-{i}", daemon=True)
            for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, work: Work, run: Callable[[], Any], wake: bool = True) -> Work:
        """Queue ``run``; its return value completes ``work`` (an exception fails it).

        ``wake=False`` when the caller is about to wait for ``work``: no worker is woken, and
        ``work.wait()`` runs it (or wakes a worker if it is not next in line).
        """
        with self._cv:
            if self._stopped:
                raise DistBackendError("the process group has been shut down")
            self._queue.append((work, run))
            if wake:
                self._cv.notify()
        work._steal = self._run_or_wake
        return work

    def is_worker(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` is one of this engine's worker threads."""
        return thread in self._workers

    def _run_or_wake(self, work: Work, run_here: bool = True) -> None:
        """Run ``work`` in the calling thread if it is next in line and no worker took it yet;
        otherwise make sure a worker will.

        ``Work.wait()`` calls this: a caller that waits at once then skips two thread hand-offs
        (the worker's wake-up and its own), which dominate small operations.
        """
        with self._cv:
            if not run_here or not self._queue or self._queue[0][0] is not work:
                self._cv.notify()
                return
            _, run = self._queue.popleft()
        self._execute(work, run)

    @staticmethod
    def _execute(work: Work, run: Callable[[], Any]) -> None:
        work._start()  # the flight recorder's "started"
        try:
            value = run()
        except BaseException as exc:  # the error belongs to the Work, not the thread
            work._fail(exc)
        else:
            work._complete(value)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopped:
                    self._cv.wait()
                if not self._queue:
                    return
                work, run = self._queue.popleft()
            self._execute(work, run)

    def shutdown(self, reason: str = "the process group has been shut down") -> None:
        """Fail queued operations, let running ones finish, and join the workers."""
        with self._cv:
            self._stopped = True
            pending, self._queue = list(self._queue), collections.deque()
            self._cv.notify_all()
        for work, _ in pending:
            work._fail(DistBackendError(reason))
        current = threading.current_thread()
        for worker in self._workers:
            if worker is not current:
                worker.join()
