"""``LazyArena``: the group's shared-memory arena, attached by the first collective that uses it.

With lazy connection setup (see :mod:`pyc10d.transport.lazy`) creating a group maps no segment:
this stand-in takes the arena's place and builds the :class:`~.arena.ShmArena` in its first
:meth:`LazyArena.begin` (every rank enters the arena in the same collectives, in issue order, so
every rank builds it in the same one), through a store handle of its own (it runs on an engine
thread), after ``connect(deadline)`` (the transport's ``connect_all``: with every peer connected,
the loss of one ends the arena's waits at once, as eagerly). The build must finish by the
collective's deadline when the collective passes it (:meth:`LazyArena.attach`), else within
``timeout`` (the group's timeout); if it fails, that collective fails with its error, which names
the ranks that did not take part, and the next collective that needs the arena tries again with
fresh store keys. Before the build, ``holder`` is 0 and ``abandon``/``abort``/``close`` do
nothing (there is nothing to tell or unmap); after it, everything is the arena's.

A known limit: if a rank's attempt times out just as a late peer completes its own side of the
same attempt, that peer keeps an arena the rank does not have, and their later collectives time
out. It needs a timeout in the very first collective that uses the arena, at its last moment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ...core.errors import DistBackendError, TransportTimeout
from ...core.timeouts import Deadline
from ...store import PrefixStore, Store
from ..base import DEADLINE_WINS_S
from ..lazy import ThreadStore
from .arena import ShmArena


class LazyArena:
    """Stands in for ``ShmArena(store, rank, world_size, deadline, failure)`` until first use;
    ``connect(deadline)``, if given, runs first (see the module doc)."""

    def __init__(
        self,
        store: Store,
        rank: int,
        world_size: int,
        timeout: timedelta | float,
        failure: Callable[[list[int]], DistBackendError | None],
        connect: Callable[[Deadline], None] | None = None,
    ) -> None:
        self.rank = rank
        self.size = world_size
        self._store = ThreadStore(store)
        self._timeout = timeout
        self._failure = failure
        self._connect = connect
        self._arena: ShmArena | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        """Whether the arena has been attached (by a collective that used it)."""
        return self._arena is not None

    def begin(self, seq: int) -> None:
        """Attach the arena if this is its first collective (see :meth:`attach`), then start
        collective ``seq`` in it (see :meth:`ShmArena.begin`)."""
        self.attach(seq).begin(seq)

    def attach(self, seq: int, deadline: Deadline | None = None) -> ShmArena:
        """The arena, attached now if it is not yet, in collective ``seq`` by ``deadline`` (the
        collective's; None: the group's timeout from now). Each attempt uses keys of its own
        (``seq``), so a collective that failed here leaves the next one a clean start; a failure
        with at most ``DEADLINE_WINS_S`` of the deadline left is the deadline's timeout."""
        with self._lock:
            if self._arena is not None:
                return self._arena
            if self._closed:
                raise DistBackendError(f"the shared-memory arena of rank {self.rank} was closed")
            deadline = deadline if deadline is not None else Deadline(self._timeout)
            try:
                if self._connect is not None:
                    self._connect(deadline)
                with self._store.use() as store:
                    attempt = PrefixStore(f"lazy/{seq}", store)
                    self._arena = ShmArena(attempt, self.rank, self.size, deadline, self._failure)
            except DistBackendError as exc:
                raise _deadline_wins(exc, deadline) from exc
            return self._arena

    def abandon(self, seq: int, timed_out: bool = False) -> None:
        """Give up collective ``seq`` in the arena (see :meth:`ShmArena.abandon`); nothing to do
        before the arena is attached."""
        if self._arena is not None:
            self._arena.abandon(seq, timed_out)

    def abort(self) -> None:
        """Make every current and later wait fail (the group is shutting down)."""
        self._closed = True
        if self._arena is not None:
            self._arena.abort()

    def close(self) -> None:
        """Unmap the arena if it was attached; idempotent."""
        with self._lock:
            self._closed = True
            arena = self._arena
        if arena is not None:
            arena.close()
        self._store.close()

    def __getattr__(self, name: str) -> Any:
        """Everything else is the attached arena's (collectives reach it after ``begin``);
        before that, ``holder`` is 0 (no collective entered it)."""
        arena = self.__dict__.get("_arena")
        if arena is None:
            if name == "holder":
                return 0
            raise AttributeError(f"{name!r}: the shared-memory arena is not attached yet")
        return getattr(arena, name)

    def __setattr__(self, name: str, value: Any) -> None:
        """This object's own attributes (``rank``, ``size``, ``_...``) are its own; any other
        (``holder``...) is set on the attached arena."""
        if name.startswith("_") or name in ("rank", "size"):
            object.__setattr__(self, name, value)
            return
        arena = self.__dict__.get("_arena")
        if arena is None:
            raise AttributeError(f"{name!r}: the shared-memory arena is not attached yet")
        setattr(arena, name, value)


def _deadline_wins(exc: DistBackendError, deadline: Deadline) -> DistBackendError:
    """``exc``, or the deadline's timeout once (almost) nothing of it is left: as for messages,
    the operation's own deadline wins over a failure noticed at its end."""
    if isinstance(exc, TransportTimeout) or deadline.remaining() > DEADLINE_WINS_S:
        return exc
    time.sleep(deadline.remaining())
    peer = getattr(exc, "peer", None)
    return TransportTimeout(
        f"the shared-memory arena's setup ({exc})",
        deadline.seconds,
        (peer,) if isinstance(peer, int) else (),
    )


__all__ = ["LazyArena"]
