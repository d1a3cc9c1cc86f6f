"""``OpContext``: what one collective needs to talk to its peers with its own tags.

Over a transport every collective starts by comparing signatures (:meth:`OpContext.agree`):
each rank sends every peer what it runs (``core.tags.Signature``, and whatever else the ranks
must agree on) and checks what every peer sent, so ranks that run different collectives, or
one that refused its part, make every rank raise, naming both sides, before any data moves.
The small direct allreduce sends its data in that same message (no extra message), so that a
rank running it and a rank running something else still meet on the signature's tag. The
message also carries its sender's deadline for the collective (wall clock), which the transport
keeps until the collective completes: a rank that completes right at a peer's deadline waits
for that peer's word before keeping its result (see
:meth:`~pyc10d.transport.mailbox_transport.MailboxTransport.abandoned`). In a group
with a shared-memory arena, a collective whose data goes over the transport (gather, scatter,
sparse allreduce, uneven reduce-scatter) compares signatures in an arena round instead, where
a rank whose arguments took it to the arena meets it too.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from ..core.errors import (
    CollectiveAbandonedError,
    DistBackendError,
    PeerFailedError,
    TransportTimeout,
)
from ..core.tags import (
    SIGNATURE_STEP,
    Signature,
    describe_tag,
    mismatch_message,
    op_tag,
    part_step_base,
)
from ..core.tensor_bytes import byte_view
from ..core.timeouts import Deadline
from ..transport.base import DEADLINE_WINS_S, Transport
from ..transport.shm.arena import ShmArena
from ..transport.shm.lazy import LazyArena

PREPOST_MIN_BYTES = 256 * 1024  # from this size a receive is posted before the matching send
NO_COLLECTIVE = 0  # ShmArena.holder once a collective moved on from the arena to the transport

SIGNATURE_FORMAT = struct.Struct("<QQd")
"""How a signature travels ahead of a message's payload: the signature, then its sender's
deadline for the collective (``time.time()`` seconds; ``inf`` for none)."""
SIGNATURE_BYTES = 16  # the signature itself, at the start of SIGNATURE_FORMAT
_DEADLINE = struct.Struct("<d")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _receive_pool() -> ThreadPoolExecutor:
    """Threads that post large receives while the caller sends (created on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pyc10d-prepost")
        return _pool


@dataclass
class OpContext:
    """One operation's view of the group: messages are tagged ``op_tag(seq, step)``."""

    transport: Transport
    rank: int
    size: int
    seq: int
    deadline: Deadline
    step_base: int = 0  # sub-operations of a coalesced collective each get their own steps
    arena: ShmArena | None = None  # the group's shared-memory arena (every rank on one host)
    take_turn: Callable[[], None] | None = None  # waits until earlier collectives left the arena

    def shm(self) -> ShmArena | None:
        """The group's arena, once every earlier collective is done with it; None without one.

        Collectives use the arena one at a time, in issue order, so that all ranks count the
        same rounds.
        """
        if self.arena is None:
            return None
        if self.take_turn is not None:
            self.take_turn()
        if isinstance(self.arena, LazyArena):  # attached by its first collective, by its deadline
            self.arena.attach(self.seq, self.deadline)
        self.arena.begin(self.seq)
        return self.arena

    def sub_operation(self, index: int) -> OpContext:
        """A context for part ``index`` of a coalesced collective (of this collective's context),
        with its own message steps (see :func:`~pyc10d.core.tags.part_step_base`)."""
        return replace(self, step_base=part_step_base(index))

    def send(self, peer: int, step: int, tensor: torch.Tensor) -> None:
        """Send a contiguous tensor's bytes to ``peer`` as message ``step``."""
        self.send_bytes(peer, step, byte_view(tensor))

    def recv(self, peer: int, step: int, tensor: torch.Tensor) -> None:
        """Receive message ``step`` from ``peer`` into a contiguous tensor."""
        self.transport.recv(
            peer, op_tag(self.seq, self.step_base + step), byte_view(tensor), self.deadline
        )

    def send_recv(
        self, dst: int, send: torch.Tensor, src: int, recv: torch.Tensor, step: int
    ) -> None:
        """Send ``send`` to ``dst`` and receive ``recv`` from ``src`` as message ``step``.

        The receive is posted first, so the payload lands straight in ``recv`` instead of being
        buffered as unexpected and copied: by the transport on this thread where it can
        (``send_recv``), else (a large receive) from another thread.
        """
        if hasattr(self.transport, "send_recv"):
            self.send_bytes(dst, step, byte_view(send), (src, byte_view(recv)))
            return
        if recv.numel() * recv.element_size() < PREPOST_MIN_BYTES:
            self.send(dst, step, send)
            self.recv(src, step, recv)
            return
        receiving = _receive_pool().submit(self.recv, src, step, recv)
        try:
            self.send(dst, step, send)
        finally:
            receiving.result()

    def agree(self, sig: Signature, extra: bytes = b"") -> list[memoryview]:
        """Exchange signatures (and ``extra``, bytes every rank sends every peer) with every
        peer; return each rank's ``extra`` in rank order. Raises DistBackendError, naming both
        sides, if a peer runs another collective or refused it; a refused ``sig`` only tells
        the peers (the caller raises its own error). In a group with an arena the signatures
        meet there (see :meth:`_agree_in_arena`), unless ``extra`` must travel with them."""
        if self.arena is not None and (not extra or sig.refused()):
            self._agree_in_arena(sig, extra)
            return [memoryview(extra)] * self.size
        deadline = self.deadline.at - time.monotonic() + time.time()
        header = SIGNATURE_FORMAT.pack(*sig, deadline)
        payload = header + extra if extra else header
        rank, size = self.rank, self.size
        for distance in range(1, size):
            self.send_bytes((rank + distance) % size, SIGNATURE_STEP, payload)
        extras = [memoryview(extra)] * size
        if sig.refused():
            return extras
        cut = SIGNATURE_FORMAT.size
        signature = header[:SIGNATURE_BYTES]
        deadlines = []
        gave_up: CollectiveAbandonedError | None = None
        for distance in range(1, size):
            peer = (rank + distance) % size
            try:
                data = memoryview(self.recv_bytes(peer, SIGNATURE_STEP))
            except CollectiveAbandonedError as exc:
                # a peer gave up (maybe on a signature this rank has not read yet): read the
                # ones already here, so that the first cause is what this rank reports too
                gave_up = gave_up or exc
                continue
            if data[:SIGNATURE_BYTES] != signature or len(data) < cut:
                self.check_signature(sig, peer, data)
            deadlines.append(_DEADLINE.unpack_from(data, SIGNATURE_BYTES)[0])
            extras[peer] = data[cut:]
        if gave_up is not None:
            raise gave_up
        expect = getattr(self.transport, "expect_deadlines", None)  # a MailboxTransport's
        if expect is not None:  # it keeps them until the collective completes
            expect(self.seq, deadlines, self.deadline.seconds)
        return extras

    def _agree_in_arena(self, sig: Signature, reason: bytes) -> None:
        """:meth:`agree` in a group with an arena, for a collective whose data goes over the
        transport: the signatures meet in an arena round, where a peer that runs its part of
        this collective in the arena (its arguments chose that way: a dense tensor, even
        blocks) looks for them too, so both sides raise the mismatch instead of each waiting
        for the other. A refusal leaves ``reason`` there for the peers, and reads nothing."""
        arena = self.shm()
        assert arena is not None
        arena.expect(sig)
        round_ = arena.start_round(self.deadline, sig.kind())
        if sig.refused():
            arena.write_reason(round_, reason)
        arena.post(round_)
        if not sig.refused():
            arena.wait_posted(round_, arena.peers, self.deadline, sig.kind())
        arena.release(round_)
        # the data goes over the transport: a failure from now on is told there, not in the
        # arena (see ProcessGroup._give_up); every rank is past this round, nobody reads it
        arena.holder = NO_COLLECTIVE

    def check_signature(self, sig: Signature, peer: int, data: bytes | memoryview) -> None:
        """Raise unless ``data`` (from ``peer``) starts with ``sig``."""
        if len(data) < SIGNATURE_FORMAT.size:
            raise DistBackendError(f"rank {peer} sent no signature for collective #{self.seq}")
        theirs = Signature(*SIGNATURE_FORMAT.unpack_from(data)[:2])
        if theirs == sig:
            return
        if theirs.refused():
            reason = bytes(data[SIGNATURE_FORMAT.size :]).decode(errors="replace")
            raise DistBackendError(f"rank {peer} refused its part of {theirs.kind()}: {reason}")
        raise DistBackendError(mismatch_message(self.rank, sig, peer, theirs, self.seq))

    def send_bytes(
        self,
        peer: int,
        step: int,
        data: bytes | memoryview,
        reply: tuple[int, memoryview] | None = None,
    ) -> None:
        """Send raw bytes (signatures, headers of variable-size exchanges); with ``reply`` =
        ``(src, out)``, receive message ``step`` from ``src`` into ``out`` too, through the
        transport's ``send_recv``. A peer found gone when at most DEADLINE_WINS_S of the
        deadline is left: the deadline is waited out and wins (TransportTimeout), as for
        receives."""
        tag = op_tag(self.seq, self.step_base + step)
        try:
            if reply is None:
                self.transport.send(peer, tag, data, self.deadline)
            else:
                src, out = reply
                self.transport.send_recv(peer, tag, data, src, tag, out, self.deadline)
        except PeerFailedError:
            remaining = self.deadline.remaining()
            if remaining > DEADLINE_WINS_S:
                raise
            time.sleep(remaining)
            raise self._send_timeout(peer, tag) from None
        except TransportTimeout as exc:
            if exc.ranks:
                raise
            raise self._send_timeout(peer, tag) from None  # named by rank, not by its tag

    def _send_timeout(self, peer: int, tag: int) -> TransportTimeout:
        """The timeout of a send to ``peer`` that did not go through by the deadline."""
        what = f"rank {peer} (to take its message of {describe_tag(tag)})"
        return TransportTimeout(what, self.deadline.seconds, (peer,))

    def recv_bytes(self, peer: int, step: int) -> bytes:
        """Receive raw bytes of any size."""
        return self.transport.recv_bytes(
            peer, op_tag(self.seq, self.step_base + step), self.deadline
        )
