"""Joining a store: every member publishes its world size, and a mismatch fails everyone at once.

Used by :class:`~pyc10d.store.TCPStore`'s ``wait_for_workers`` (members unnamed: "the master",
"a client"; only the master waits, as in torch) and by ``tcp://``/``env://`` rendezvous
(members are ranks; every rank waits until all have joined). The keys, under ``prefix`` in the
store's internal namespace (hidden from ``num_keys``/``list_keys``):

``world_size``     the first member's ``"<world size>|<who>"`` (compare_set: the first one wins)
``rank/<r>``       ranked joins: which process (``host (pid N)``) claimed rank r
``ranks``          ranked joins: the joined ranks, appended as ``"r,"`` (to name the missing ones)
``num_workers``    how many members joined
``workers_ready``  ``ok`` once ``world_size`` members joined, or ``error:<message>``
``inside``         members now inside :func:`join`; ``empty`` is set when it drops to 0

A member whose world size differs from the first member's (or that claims a rank another process
holds) writes the error to ``workers_ready`` before raising, so every member still waiting
fails at once with the same message, naming both world sizes and who had them. A failing master
hosts the server, and its process may exit as soon as it raises: it first gives the members
inside the join up to :data:`LINGER_S` to read the error and leave.

While it waits, the master (rank 0) logs a progress line on this module's logger every
:func:`progress_interval` seconds (30; ``PYC10D_RENDEZVOUS_PROGRESS_S`` overrides, 0 turns them
off). They are WARNINGs: with no logging configuration Python prints WARNING and above to
stderr, so a user sees why a start hangs without configuring anything (as torch's store warns).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

from ...core.errors import DistError, DistStoreError
from ...core.timeouts import Deadline, format_ms
from ..base import Store

log = logging.getLogger(__name__)

PROGRESS_ENV = "PYC10D_RENDEZVOUS_PROGRESS_S"
PROGRESS_S = 30.0
"""Seconds between progress lines while waiting to connect or for members to join."""

DONE_OK = b"ok"
DONE_ERROR = b"error:"
MAX_LISTED = 8  # missing ranks named in a message; the rest are counted
LINGER_S = 10.0  # longest a failing master waits for the others to read the error


class _JoinFailed(Exception):
    """Internal: a world-size mismatch or a rank claimed twice, found here or by another member."""


def progress_interval() -> float:
    """Seconds between progress lines: ``PYC10D_RENDEZVOUS_PROGRESS_S`` if set, else 30.

    A value of 0 (or less) turns progress lines off (``inf``); a non-number is a ValueError.
    """
    raw = os.environ.get(PROGRESS_ENV, "").strip()
    if not raw:
        return PROGRESS_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{PROGRESS_ENV} must be a number of seconds, got {raw!r}") from None
    return value if value > 0 else math.inf


def _seconds(value: float) -> str:
    """Whole seconds from 10 s on, tenths below: ``1800``, ``3.5``."""
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}".removesuffix(".0")


def progress_clock(elapsed: float, timeout_s: float) -> str:
    """``"30 s of 1800 s"`` (``"30 s, no timeout"`` when ``timeout_s`` is 0)."""
    if timeout_s <= 0:
        return f"{_seconds(elapsed)} s, no timeout"
    return f"{_seconds(elapsed)} s of {_seconds(timeout_s)} s"


def format_ranks(ranks: list[int]) -> str:
    """``"rank 2"``, ``"ranks 1, 2"``; past :data:`MAX_LISTED` ranks, ``"... and 92 more"``."""
    shown = ", ".join(str(r) for r in ranks[:MAX_LISTED])
    more = f" and {len(ranks) - MAX_LISTED} more" if len(ranks) > MAX_LISTED else ""
    return f"{'rank' if len(ranks) == 1 else 'ranks'} {shown}{more}"


@dataclass(frozen=True)
class JoinSpec:
    """Who joins where: ``rank`` None for TCPStore's unnamed members."""

    prefix: str
    world_size: int
    address: str  # "host:port", for messages
    timeout_s: float  # 0: wait forever
    is_master: bool = False
    rank: int | None = None
    wait: bool = True  # wait until everyone has joined (else only publish and count)

    @property
    def who(self) -> str:
        """This member in messages: ``rank 1``, ``the master`` or ``a client``."""
        if self.rank is not None:
            return f"rank {self.rank}"
        return "the master" if self.is_master else "a client"

    def key(self, name: str) -> str:
        """The store key ``name`` of this join."""
        return self.prefix + name


def join(store: Store, spec: JoinSpec) -> None:
    """Join: check the world size, count in, and (if ``spec.wait``) wait for everyone.

    Raises DistStoreError for a world-size mismatch, a rank claimed twice, or a timeout (saying
    how many of how many joined, and which ranks are missing).
    """
    store.add(spec.key("inside"), 1)
    if spec.is_master:  # nobody can empty the join while the master is inside
        store.delete_key(spec.key("empty"))
    try:
        _join(store, spec)
    except _JoinFailed as exc:
        _leave(store, spec, linger=spec.is_master)
        raise DistStoreError(str(exc)) from None
    except DistStoreError:  # timed out: count out, if the store still answers
        with contextlib.suppress(DistError):
            _leave(store, spec, linger=False)
        raise
    _leave(store, spec, linger=spec.is_master)  # the server outlives the last count-out


def _join(store: Store, spec: JoinSpec) -> None:
    _check_world_size(store, spec)
    if spec.rank is not None:
        _claim_rank(store, spec)
        store.append(spec.key("ranks"), f"{spec.rank},")
    if store.add(spec.key("num_workers"), 1) >= spec.world_size:
        store.compare_set(spec.key("workers_ready"), b"", DONE_OK)
    if spec.wait:
        _await_everyone(store, spec)


def _leave(store: Store, spec: JoinSpec, linger: bool) -> None:
    """Count this member out; with ``linger``, wait (a little) until everyone else is out."""
    if store.add(spec.key("inside"), -1) <= 0:
        store.set(spec.key("empty"), b"1")
        return
    if linger:
        grace = min(LINGER_S, spec.timeout_s) if spec.timeout_s > 0 else LINGER_S
        try:
            store.wait([spec.key("empty")], timedelta(seconds=grace))
        except DistStoreError:
            pass  # a member is slow to read the error: it will find the server gone


def _fail(store: Store, spec: JoinSpec, message: str) -> _JoinFailed:
    """Publish ``message`` to everyone still waiting (unless the join already ended); return it."""
    store.compare_set(spec.key("workers_ready"), b"", DONE_ERROR + message.encode())
    return _JoinFailed(message)


def _check_world_size(store: Store, spec: JoinSpec) -> None:
    mine = f"{spec.world_size}|{spec.who}".encode()
    first = store.compare_set(spec.key("world_size"), b"", mine).decode(errors="replace")
    size, _, who = first.partition("|")
    if size == str(spec.world_size):
        return
    if spec.rank is not None:
        hint = "start every rank with the same world size (WORLD_SIZE or world_size=)"
        where = f"the rendezvous at {spec.address}"
    else:
        hint = "every TCPStore of one job must be given the same world_size"
        where = f"the TCPStore at {spec.address}"
    raise _fail(
        store,
        spec,
        f"world size mismatch in {where}: {spec.who} has world_size={spec.world_size} but "
        f"{who} has world_size={size}; {hint}",
    )


def _claim_rank(store: Store, spec: JoinSpec) -> None:
    me = f"{socket.gethostname()} (pid {os.getpid()})".encode()
    holder = store.compare_set(spec.key(f"rank/{spec.rank}"), b"", me)
    if holder != me:
        raise _fail(
            store,
            spec,
            f"rank {spec.rank} joined the rendezvous at {spec.address} twice: from "
            f"{holder.decode(errors='replace')} and from {me.decode()}; every process needs its "
            "own RANK",
        )


def _get_within(store: Store, key: str, seconds: float) -> bytes:
    """``store.get(key)`` waiting at most ``seconds`` (``inf``: forever)."""
    saved = store.timeout
    store.set_timeout(timedelta(0) if math.isinf(seconds) else timedelta(seconds=seconds))
    try:
        return store.get(key)
    finally:
        store.set_timeout(saved)


def _await_everyone(store: Store, spec: JoinSpec) -> None:
    """Wait for ``workers_ready``; the master logs progress; raise its error or on timeout.

    The outcome is read with one blocking ``get``: when the master hosts the server and fails,
    its process may exit right after, and the reply must already be on the way.
    """
    started = time.monotonic()
    deadline = Deadline(spec.timeout_s)
    interval = progress_interval()
    while True:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise DistStoreError(_timeout_message(store, spec))
        try:
            outcome = _get_within(store, spec.key("workers_ready"), min(interval, remaining))
            break
        except DistStoreError:
            store.check([spec.key("workers_ready")])  # a broken store raises here, not a loop
            if spec.is_master and not deadline.expired():
                log.warning(
                    "pyc10d: %s", _progress_message(store, spec, time.monotonic() - started)
                )
    if outcome.startswith(DONE_ERROR):
        raise _JoinFailed(outcome[len(DONE_ERROR) :].decode(errors="replace"))


def _joined(store: Store, spec: JoinSpec) -> tuple[int, list[int]]:
    """How many joined, and (ranked joins) the missing ranks."""
    if spec.rank is None:
        return store.add(spec.key("num_workers"), 0), []
    raw = store.get(spec.key("ranks")).decode()  # holds this rank's own entry at least
    joined = {int(r) for r in raw.split(",") if r}
    return len(joined), [r for r in range(spec.world_size) if r not in joined]


def _progress_message(store: Store, spec: JoinSpec, elapsed: float) -> str:
    count, missing = _joined(store, spec)
    clock = progress_clock(elapsed, spec.timeout_s)
    if spec.rank is None:
        return (
            f"TCPStore master waiting for clients ({count}/{spec.world_size} joined) at "
            f"{spec.address}, {clock}"
        )
    return (
        f"{spec.who} waiting for {format_ranks(missing)} ({count}/{spec.world_size} joined) "
        f"at {spec.address}, {clock}"
    )


def _timeout_message(store: Store, spec: JoinSpec) -> str:
    count, missing = _joined(store, spec)
    after = format_ms(spec.timeout_s)
    if spec.rank is None:
        return (
            f"TCPStore master timed out after {after} waiting for clients at {spec.address}: "
            f"{count}/{spec.world_size} clients joined"
        )
    return (
        f"rendezvous at {spec.address} timed out after {after} on {spec.who}: "
        f"{count}/{spec.world_size} ranks joined, still missing {format_ranks(missing)}"
    )
