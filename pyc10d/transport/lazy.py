"""Lazy connection setup: ``PYC10D_LAZY_INIT=1`` (or torch's ``TORCH_GLOO_LAZY_INIT=1``).

Eagerly (the default), creating a group connects every pair of ranks and attaches the
shared-memory arena before the constructor returns. Lazily, creating a group only listens and
publishes its address in the store: a pair of ranks connects when one of them first sends to the
other (see :mod:`.tcp.lazy`), and the arena is attached by the first collective that uses it
(see :mod:`.shm.lazy`), so a group whose ranks talk to few peers makes only those connections.
Every rank of a group must use the same setting.

Work that runs on background threads (an engine's workers) uses the store through
:class:`ThreadStore`: a handle of its own (``Store.clone``), so that it never shares a store
client with the user's thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ..store import Store

LAZY_ENVS = ("PYC10D_LAZY_INIT", "TORCH_GLOO_LAZY_INIT")
"""The variables that ask for lazy connection setup (either one set to a true value does)."""

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def lazy_init_from_env() -> bool:
    """Whether ``PYC10D_LAZY_INIT`` or ``TORCH_GLOO_LAZY_INIT`` asks for lazy setup.

    Raises ValueError for a value that is neither true (``1``, ``true``, ``yes``, ``on``) nor
    false (unset, empty, ``0``, ``false``, ``no``, ``off``).
    """
    lazy = False
    for name in LAZY_ENVS:
        value = os.environ.get(name, "").strip().lower()
        if value in _TRUE:
            lazy = True
        elif value not in _FALSE:
            raise ValueError(f"{name} must be 0 or 1, got {os.environ[name]!r}")
    return lazy


def resolve_lazy(lazy: bool | None) -> bool:
    """``lazy`` if given (an explicit option wins), else what the environment asks for."""
    return lazy_init_from_env() if lazy is None else bool(lazy)


class ThreadStore:
    """A store handle for background threads, cloned from ``store`` on first use.

    ``with handle.use() as store:`` runs with the handle's lock held: threads of one group take
    turns on it. A store that cannot be cloned is used itself.
    """

    def __init__(self, store: Store) -> None:
        self._source = store
        self._store: Store | None = None
        self._lock = threading.Lock()

    @contextmanager
    def use(self) -> Iterator[Store]:
        """The handle's store, its lock held until the ``with`` block ends."""
        with self._lock:
            if self._store is None:
                try:
                    self._store = self._source.clone()
                except NotImplementedError:
                    self._store = self._source
            yield self._store

    def close(self) -> None:
        """Close the clone (if one was made and no thread uses it now: else it is left to
        garbage collection, which closes it too)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            clone, self._store = self._store, None
        finally:
            self._lock.release()
        if clone is None or clone is self._source:
            return
        while not hasattr(clone, "close") and hasattr(clone, "underlying_store"):
            clone = clone.underlying_store  # a PrefixStore: the clone it wraps
        close = getattr(clone, "close", None)
        if close is not None:
            close()


__all__ = ["LAZY_ENVS", "ThreadStore", "lazy_init_from_env", "resolve_lazy"]
