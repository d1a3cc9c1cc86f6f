"""``monitored_barrier``: a barrier whose rank 0 names the ranks that did not arrive in time.

It follows torch's Gloo implementation (``ProcessGroupGloo::monitoredBarrier``): every non-zero
rank checks in with rank 0 and waits for rank 0's answer; rank 0 waits for each rank in turn
within ``timeout`` and raises ``"[Rank 0]: Rank 1 failed to pass monitoredBarrier in 100 ms"``
for the first missing one (with ``wait_all_ranks=True``, it waits ``timeout`` for each rank and
names them all: ``"[Rank 0]: Ranks 1, 2 failed to pass monitoredBarrier in 100 ms"``).

The messages go through the group's key-value store, not its connections, so a failed
monitored barrier leaves the group's collectives and point-to-point traffic untouched: the ranks
that arrived can keep using the group. When rank 0 fails it also tells the ranks that did
arrive, which then raise ``"Rank N successfully reached monitoredBarrier, but received errors
while waiting for send/recv from rank 0 ..."`` at once instead of waiting; a non-zero rank waits
at most the longer of ``timeout`` and the group's timeout for rank 0 (torch's Gloo uses the
group's). Best effort: each rank numbers its own calls, so a rank that skipped a monitored barrier
stays one call behind, and its later monitored barriers on that group fail.
"""

from __future__ import annotations

import logging
import time
import warnings
import weakref
from datetime import timedelta
from typing import Any

from ..core.errors import DistStoreError
from ..process_group import ProcessGroup
from ..store import Store
from .state import is_non_member, resolve, warn_not_in_group

__all__ = ["monitored_barrier"]  # run_monitored_barrier is for the torch backend

logger = logging.getLogger(__name__)

_OK = b"ok"
_FAILED = b"failed:"

# how many monitored barriers this process has run on each group (the call number in the keys)
_calls: weakref.WeakKeyDictionary[ProcessGroup, int] = weakref.WeakKeyDictionary()


def _next_call(pg: ProcessGroup) -> int:
    call = _calls.get(pg, 0) + 1
    _calls[pg] = call
    return call


def _store_of(pg: ProcessGroup) -> Store:
    """The group's own store namespace (unique to this ProcessGroup instance)."""
    return pg._store


def _arrived(store: Store, key: str, seconds: float) -> bool:
    """True if ``key`` exists within ``seconds`` (0 or less: check once, without waiting)."""
    if seconds > 0:
        try:
            store.wait([key], timedelta(seconds=seconds))
            return True
        except DistStoreError:
            pass
    return store.check([key])


def _check_timeout(timeout: Any, pg: ProcessGroup) -> timedelta:
    """``timeout`` as torch accepts it: None (the group's), a timedelta, or float seconds."""
    if timeout is None:
        return pg.options.timeout
    if isinstance(timeout, float):
        warnings.warn(
            "Please specify timeout arg as a timedelta. "
            f"Converting current value of {timeout} assuming it represents seconds",
            stacklevel=4,
        )
        timeout = timedelta(seconds=timeout)
    if not isinstance(timeout, timedelta):
        raise TypeError(
            "Expected timeout argument to be of type datetime.timedelta, "
            f"got {type(timeout).__name__}"
        )
    return timeout


def _wait_as_rank_zero(
    pg: ProcessGroup, store: Store, prefix: str, timeout: timedelta, wait_all_ranks: bool
) -> None:
    """Rank 0's side: wait for every other rank's check-in; raise torch's messages if missing."""
    timeout_ms = int(timeout.total_seconds() * 1000)
    start = time.monotonic()
    processed: list[int] = []
    failed: list[int] = []
    for rank in range(1, pg.size()):
        if wait_all_ranks:
            seconds = timeout.total_seconds()  # as in Gloo: the whole timeout for each rank
        else:
            remaining_ms = timeout_ms - int((time.monotonic() - start) * 1000)
            if remaining_ms <= 0:
                done = ", ".join(map(str, processed))
                info = (
                    f"Successfully processed ranks: {done}"
                    if processed
                    else "No ranks successfully processed in monitoredBarrier."
                )
                raise RuntimeError(
                    f"Rank {pg.rank()} timed out in monitoredBarrier after {timeout_ms} ms.\n{info}"
                )
            seconds = remaining_ms / 1000
        key = f"{prefix}/arrived/{rank}"
        if _arrived(store, key, seconds):
            processed.append(rank)
            store.delete_key(key)
            continue
        error = f"[Rank 0]: Rank {rank} failed to pass monitoredBarrier in {timeout_ms} ms"
        if not wait_all_ranks:
            raise RuntimeError(error)
        logger.error(error)
        failed.append(rank)
    if failed:
        ranks = ", ".join(map(str, failed))
        raise RuntimeError(
            f"[Rank 0]: Ranks {ranks} failed to pass monitoredBarrier in {timeout_ms} ms"
        )


def monitored_barrier(
    group: Any = None,
    timeout: timedelta | float | None = None,
    wait_all_ranks: bool = False,
) -> None:
    """Synchronize ``group`` like ``barrier``, with rank 0 reporting ranks that miss ``timeout``
    (torch.distributed.monitored_barrier, Gloo's semantics; see the module docstring).

    ``timeout`` defaults to the group's timeout; a float is taken as seconds, with torch's
    warning. Rank 0 raises RuntimeError naming the first missing rank (all of them with
    ``wait_all_ranks=True``); the other ranks then raise too. Outside ``group``: a warning.
    """
    if is_non_member(group):
        warn_not_in_group("monitored_barrier")
        return
    pg = resolve(group)
    if pg is None:
        warn_not_in_group("monitored_barrier")
        return
    run_monitored_barrier(pg, timeout, wait_all_ranks)


def run_monitored_barrier(
    pg: ProcessGroup, timeout: timedelta | float | None, wait_all_ranks: bool
) -> None:
    """:func:`monitored_barrier` on a pyc10d group whose member this process is."""
    timeout = _check_timeout(timeout, pg)
    if pg.size() == 1:
        return
    store = _store_of(pg)
    call = _next_call(pg)
    prefix = f"pyc10d/monitored_barrier/{call}"
    release = f"{prefix}/release"
    rank = pg.rank()
    if rank == 0:
        try:
            _wait_as_rank_zero(pg, store, prefix, timeout, wait_all_ranks)
        except RuntimeError as exc:
            store.set(release, _FAILED + str(exc).encode())
            raise
        store.set(release, _OK)
        # everyone has left the previous call: its answer is no longer needed
        store.delete_key(f"pyc10d/monitored_barrier/{call - 1}/release")
        return
    store.set(f"{prefix}/arrived/{rank}", b"1")
    reached = (
        f"Rank {rank} successfully reached monitoredBarrier, but received errors while waiting"
        " for send/recv from rank 0. Please check rank 0 logs for faulty rank."
    )
    wait = max(timeout, pg.options.timeout)
    try:
        store.wait([release], wait)
        answer = store.get(release)
    except DistStoreError as exc:
        raise RuntimeError(f"{reached}\n Original exception: \n{exc}") from exc
    if answer != _OK:
        original = answer.removeprefix(_FAILED).decode(errors="replace")
        raise RuntimeError(f"{reached}\n Original exception: \n{original}")
