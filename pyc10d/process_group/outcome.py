"""How a failed collective ends on every rank: the same way, naming the ranks at fault.

A rank that gives up on a collective (its deadline passed, or anything else failed there) tells
its peers: on the shared-memory arena through its log of abandoned collectives (see
:mod:`pyc10d.transport.shm.arena`), over a transport with a control message
(:meth:`~pyc10d.transport.base.Transport.abandon`) whose payload names the ranks it waited for.
A peer still in that collective (or reaching it late) raises too, so no rank keeps a result
another rank does not have.

Which rank to name: a rank that times out waiting for a peer that is itself stuck waiting for a
third one (a chain: ring steps, tree rounds) would name the wrong rank. So after its own timeout
a rank waits briefly (:func:`grace_seconds`) for the ranks it waited for to report theirs, and
names the ranks *they* waited for (:func:`widen_blame`); a rank told by a peer that the peer
timed out waiting for it, while it was waiting for others itself, names those others
(:func:`from_peer`). A rank that comes to a collective after a peer gave up on it (a late rank)
gets a :class:`~pyc10d.core.errors.CollectiveAbandonedError` naming that peer.

A peer that gave up for another reason says why over a transport (the control message's
payload), but the arena's log only says that it failed. Most often it lost a rank that this
rank is about to find lost too (their connections end at the same time): so a rank told so by
the arena gives its transport up to :data:`LOSS_GRACE_S` to report a lost peer, and raises
that loss instead (:func:`from_peer`), the error its peer raised.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core.errors import (
    CollectiveAbandonedError,
    DistBackendError,
    TransportTimeout,
    fresh_error,
)
from ..core.timeouts import format_ms
from ..transport.base import Transport
from ..transport.mailbox import abandon_payload
from ..transport.mailbox_transport import MailboxTransport

GRACE_SHARE = 0.25
"""The share of an operation's timeout its grace period is (see :func:`grace_seconds`)."""
GRACE_MIN_S = 0.1
GRACE_MAX_S = 1.0
LOSS_GRACE_S = 0.5
"""How long a rank told by the arena that a peer failed waits to find a lost rank itself."""


def grace_seconds(timeout_s: float) -> float:
    """How long a rank that timed out waits for the ranks it waited for to say why."""
    return min(GRACE_MAX_S, max(GRACE_MIN_S, GRACE_SHARE * timeout_s))


def timeout_error(ranks: Sequence[int], seconds: float, seq: int) -> TransportTimeout:
    """``Timed out waiting {N}ms for rank(s) ... to take part in collective #seq``."""
    names = ", ".join(map(str, ranks))
    word = "rank" if len(ranks) == 1 else "ranks"
    return TransportTimeout(
        f"{word} {names} to take part in collective #{seq}", seconds, tuple(ranks)
    )


def from_peer(
    err: CollectiveAbandonedError, me: int, started: float, transport: Transport | None = None
) -> DistBackendError:
    """The error rank ``me`` raises for a collective (started at monotonic ``started``) that
    peer ``err.peer`` gave up on.

    A peer that failed for another reason than a timeout is named with its reason; when it
    gave none (the arena's log), the loss of another rank that ``transport`` reports within
    LOSS_GRACE_S is raised instead (see the module doc). One that timed out names the ranks it
    waited for (``err.blame``): if ``me`` is not among them this rank times out on the same
    ranks; if it is, but this rank was already in the collective and waiting for other ranks
    (``err.waiting_for``), those are the ranks at fault; otherwise this rank came too late, and
    says so (``err`` itself).
    """
    seconds = getattr(err, "seconds", None)
    blame = set(getattr(err, "blame", ()))
    if seconds is None or not blame:  # it failed otherwise, or timed out on its own earlier work
        if transport is not None and seconds is None and getattr(err, "reason", None) is None:
            return _lost_instead(err, me, transport)
        return err
    if me not in blame:
        return timeout_error(sorted(blame), seconds, err.seq)
    waiting = set(getattr(err, "waiting_for", ())) - {err.peer, me}
    if waiting and getattr(err, "arrived", 0.0) >= started:
        return timeout_error(sorted((blame - {me}) | waiting), seconds, err.seq)
    late = CollectiveAbandonedError(
        f"rank {err.peer} gave up on collective #{err.seq} (it timed out after "
        f"{format_ms(seconds)} waiting for rank {me}) before rank {me} took part in it: "
        "no rank gets a result from it",
        peer=err.peer,
        seq=err.seq,
    )
    late.blame, late.seconds = tuple(sorted(blame)), seconds
    return late


def _lost_instead(err: CollectiveAbandonedError, me: int, transport: Transport) -> DistBackendError:
    """The loss of a rank other than ``me`` and ``err.peer`` that ``transport`` reports within
    LOSS_GRACE_S (most likely why ``err.peer`` gave up); ``err`` if there is none."""
    others = [r for r in range(transport.world_size) if r not in (me, err.peer)]
    if not others or not isinstance(transport, MailboxTransport):
        return err
    lost = transport.wait_peer_failure(others, LOSS_GRACE_S)
    return err if lost is None else fresh_error(lost)


def widen_blame(
    transport: Transport, exc: TransportTimeout, me: int, seq: int, grace: float
) -> TransportTimeout:
    """After this rank timed out waiting for ``exc.ranks`` in collective ``seq``: give them up
    to ``grace`` seconds to report their own timeouts, and name the ranks they waited for
    (those that do not report are named themselves)."""
    awaited = [r for r in exc.ranks if r != me]
    if not awaited:
        return exc
    reports = transport.wait_abandoned(seq, awaited, grace)
    blamed: set[int] = set()
    for rank in awaited:
        report = reports.get(rank)
        theirs: set[int] = set()
        if isinstance(report, CollectiveAbandonedError) and report.seconds is not None:
            theirs = set(report.blame) - {me}
        blamed |= theirs or {rank}
    return timeout_error(sorted(blamed), exc.seconds, seq)


def tell_peers(transport: Transport, seq: int, err: BaseException) -> None:
    """Tell every peer that this rank gave up on collective ``seq`` because of ``err``."""
    if isinstance(err, TransportTimeout):
        payload = abandon_payload(str(err), err.ranks, err.seconds)
    else:
        payload = abandon_payload(str(err) or type(err).__name__)
    transport.abandon(seq, payload)
