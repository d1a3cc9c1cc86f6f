"""The async engine: operations start in issue order, up to ``threads`` of them at a time.

Calls return a :class:`Work` at once; worker threads run the operations. Each operation has its
own message tags, so concurrent ones never mix messages (see ``transport.base.op_tag``).

Waking a worker thread is the largest cost of a small operation (the worker then competes with the
caller for the GIL), so an operation may be queued *deferred* (``submit(wake=False)``): no worker
is woken for it. Its caller usually waits for it at once, and ``Work.wait()`` then runs it in the
calling thread when nothing queued before it is still waiting (otherwise the workers start those,
each under its own deadline, and this one waits its turn). Anything else that shows interest in it
(``get_future()``, ``is_completed()``, ``exception()``, a bounded wait) *rushes* the queue: a
worker starts every queued operation at once. And one worker, the *pacer*, keeps time: a deferred
operation nobody asked about starts at most :data:`DEFER_S` after it was queued, so work always
makes progress (a peer may be waiting for it).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from typing import Any

from ..core.errors import DistBackendError
from .work import Work

DEFER_S = 0.001
"""The longest a deferred operation waits in the queue before a worker starts it anyway."""

PACER_LINGER_TICKS = 50
"""Empty ticks of :data:`DEFER_S` the pacer waits for new deferred operations before it goes
back to sleep (a burst of operations then costs one wake-up, not one per operation)."""

_Item = tuple[Work, Callable[[], Any], float]  # (work, run, queued at: time.monotonic())


class Engine:
    """A FIFO of operations served by ``threads`` daemon worker threads."""

    def __init__(self, threads: int, name: str) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self._queue: collections.deque[_Item] = collections.deque()
        self._cv = threading.Condition()
        self._stopped = False
        self._rush = False  # start every queued operation now (until the queue is empty)
        self._pacer = False  # a worker keeps time for the deferred operations
        self._pacer_asked = False  # a worker was woken to become the pacer
        self._workers = [
            threading.Thread(target=self._loop, name=f"{name}-worker-{i}", daemon=True)
            for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, work: Work, run: Callable[[], Any], wake: bool = True) -> Work:
        """Queue ``run``; its return value completes ``work`` (an exception fails it).

        ``wake=False`` defers it: no worker is woken for it (see the module's docstring);
        ``work.wait()`` runs it in the waiting thread if no worker started it yet.
        """
        with self._cv:
            if self._stopped:
                raise DistBackendError("the process group has been shut down")
            self._queue.append((work, run, time.monotonic()))
            if wake:
                self._rush = True
                self._cv.notify()
            elif not self._pacer and not self._pacer_asked:
                self._pacer_asked = True
                self._cv.notify()
        work._steal = self._run_or_wake
        return work

    def is_worker(self, thread: threading.Thread) -> bool:
        """Whether ``thread`` is one of this engine's worker threads."""
        return thread in self._workers

    def _run_or_wake(self, work: Work, run_here: bool = True) -> None:
        """Run ``work`` in the calling thread if it is next in the queue and no worker took it
        yet; if operations queued before it are still waiting, or with ``run_here=False``, make
        the workers start them now instead.

        ``Work.wait()`` calls this: a caller that waits at once then skips two thread hand-offs
        (the worker's wake-up and its own), which dominate small operations. Earlier operations
        are never run inline: each must run under its own deadline while this one waits its
        turn under its own (a short timeout on a later call must not become theirs, nor theirs
        hold this caller past its own).
        """
        with self._cv:
            queue = self._queue
            if queue and queue[0][0] is work and run_here:
                item = queue.popleft()
            else:
                if any(i[0] is work for i in queue):  # still queued behind others
                    self._rush = True
                    self._cv.notify()
                return  # running, done, or now started by a worker
        self._execute(item[0], item[1])

    @staticmethod
    def _execute(work: Work, run: Callable[[], Any]) -> None:
        work._start()  # the flight recorder's "started"
        try:
            value = run()
        except BaseException as exc:  # the error belongs to the Work, not the thread
            work._fail(exc)
        else:
            work._complete(value)

    def _due(self) -> bool:
        """Whether a worker should start the head of the queue now (``_cv`` held)."""
        queue = self._queue
        return bool(queue) and (self._rush or time.monotonic() - queue[0][2] >= DEFER_S)

    def _take(self, pacing: bool) -> tuple[_Item | None, bool]:
        """The next operation a worker should run once it is due (None once stopped), and
        whether this worker still keeps time (``pacing``: it did when it last ran one; the role
        stays with it while it runs an operation, so that submits need not wake another)."""
        idle = 0
        with self._cv:
            while not self._stopped:
                queue = self._queue
                if self._due():
                    item = queue.popleft()
                    if not queue:
                        self._rush = False
                    elif self._rush:  # the rest is due too: another worker may start it
                        self._cv.notify()
                    return item, pacing
                if not pacing and (self._pacer or not (queue or self._pacer_asked)):
                    self._cv.wait()  # another worker keeps time, or there is nothing to time
                    continue
                pacing, self._pacer, self._pacer_asked = True, True, False
                idle = 0 if queue else idle + 1
                if idle > PACER_LINGER_TICKS:
                    pacing = self._pacer = False
                    continue
                wait = DEFER_S - (time.monotonic() - queue[0][2]) if queue else DEFER_S
                self._cv.wait(max(wait, 0.0))
            if pacing:
                self._pacer = False
        return None, False

    def _loop(self) -> None:
        pacing = False
        while True:
            item, pacing = self._take(pacing)
            if item is None:
                return
            self._execute(item[0], item[1])

    def shutdown(self, reason: str = "the process group has been shut down") -> None:
        """Fail queued operations, let running ones finish, and join the workers."""
        with self._cv:
            self._stopped = True
            pending, self._queue = list(self._queue), collections.deque()
            self._cv.notify_all()
        for work, _, _ in pending:
            work._fail(DistBackendError(reason))
        current = threading.current_thread()
        for worker in self._workers:
            if worker is not current:
                worker.join()
