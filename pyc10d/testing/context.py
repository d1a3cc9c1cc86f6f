"""``RankContext``: what each rank of a :func:`pyc10d.testing.spawn` run is told about the run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..store import TCPStore


@dataclass
class RankContext:
    """Per-rank facts of one ``spawn`` run, passed as the first argument of the rank function.

    ``master_addr``/``master_port`` address a fresh TCPStore server hosted by the parent for this
    run (use :attr:`store` for a connected client). The ``MASTER_PORT`` environment variable is a
    different, free port, so that ``env://`` rendezvous can host its own server on rank 0.
    ``env`` holds the environment variables the harness set for this rank.
    """

    rank: int
    world_size: int
    tmpdir: str
    init_file: str
    master_addr: str
    master_port: int
    env: dict[str, str] = field(default_factory=dict, repr=False)
    _store: TCPStore | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def init_method(self) -> str:
        """A ``file://`` init method naming :attr:`init_file`, fresh for this run."""
        return f"file://{self.init_file}"

    @property
    def local_rank(self) -> int:
        """The rank on this host; every rank of a ``spawn`` run is local, so equal to ``rank``."""
        return self.rank

    @property
    def store(self) -> TCPStore:
        """A client of the parent's TCPStore server, connected on first use; empty at the start."""
        if self._store is None:
            from ..store import TCPStore

            self._store = TCPStore(
                self.master_addr,
                self.master_port,
                self.world_size,
                is_master=False,
                wait_for_workers=False,
            )
        return self._store

    def path(self, name: str) -> str:
        """A path named ``name`` inside :attr:`tmpdir` (shared by all ranks; not created)."""
        return os.path.join(self.tmpdir, name)

    def close(self) -> None:
        """Close the store client if one was created (the harness calls this after the rank)."""
        store, self._store = self._store, None
        if store is not None:
            store.close()
