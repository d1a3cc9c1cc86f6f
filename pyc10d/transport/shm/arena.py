"""The shared-memory arena of a group whose ranks all share one host.

Every rank owns one segment that every other rank maps; collectives then move data by plain
copies and reductions between mapped slots (see ``pyc10d.collectives.shm``), with no messages and
no helper thread. A segment is a control block plus two staging slots::

    [0]     POSTED:   last round whose input this rank has put in its slot
    [64]    REDUCED:  last round whose reduced slice lies in its slot
    [128]   RELEASED: last round whose peers' slots this rank has finished reading
    [192]   SLEEPING: while this rank is blocked on its doorbell, 1 + the counter it waits on
    [256]   SIGNATURE of slot 0, [320] of slot 1: two u64 (``core.tags.Signature``)
    [384]   POSTED_ROUND of slot 0, [448] of slot 1; [512] REDUCED_ROUND of slot 0, [576] of 1
    [1024]  ABANDONED: 64 u64, ``seq << 4 | state`` at ``seq % 64`` for a collective this rank
            gave up on (PENDING while it decides, then WITHDRAWN, TIMED_OUT or FAILED)
    [4096]  slot 0, slot 1 (``slot_bytes`` each; round ``R`` uses slot ``R & 1``)

Counters are u64 on their own cache lines and only ever grow. A round is
``op_tag(seq, k)`` for the k-th round of collective number ``seq``, so ranks agree on
rounds even after one of them abandoned a collective on timeout. x86 keeps stores, and loads,
in program order, so data written before a counter is visible to whoever sees the counter.

Every rank posts each round of a collective (with its signature) and waits for every peer's
post, so every rank's result depends on every rank having joined. That makes giving up safe:
a rank whose wait times out marks the collective PENDING in its ABANDONED log, fences, and looks
at the counters once more. If they are there now it marks WITHDRAWN and goes on; otherwise it
marks TIMED_OUT and raises. A rank that finishes a collective looks at its peers' logs after
its last post (:meth:`ShmArena.finish`): a peer that gave up (TIMED_OUT, FAILED) fails it too,
and a PENDING one is waited out. Store, fence, load on both sides: at least one of the two sees
the other's store, so either the finisher sees the mark, or the giver-up sees its counter and
withdraws; no rank keeps a result of a collective another rank failed (a late rank included).

Waiting spins briefly (yielding the CPU), then blocks on a doorbell socket (an abstract UNIX
datagram socket) for at most a couple of milliseconds at a time, looking for a dead peer
(through ``failure``) and the deadline between blocks: a lost wake-up costs latency, never a hang.
Segments are anonymous (``memfd_create``) and shared by passing their descriptors over the
doorbell sockets, so nothing is ever named in ``/dev/shm``: the kernel frees the memory when the
last process unmaps it, whatever happens to the processes.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import mmap
import os
import secrets
import select
import socket
import threading
import time
from array import array
from collections.abc import Callable, Sequence

import torch

from ...core.auth import load_key
from ...core.errors import (
    CollectiveAbandonedError,
    DistBackendError,
    TransportTimeout,
    fresh_error,
)
from ...core.tags import Signature, mismatch_message, op_tag, signature, tag_seq
from ...core.tensor_bytes import byte_view
from ...core.timeouts import Deadline, format_ms
from ...store import PrefixStore, Store
from ..base import DEADLINE_WINS_S
from .setup import descriptor_note, descriptor_sender, same_host_peers, wait_for_keys

log = logging.getLogger(__name__)

POSTED, REDUCED, RELEASED, SLEEPING = 0, 8, 16, 24  # u64 indexes (64-byte lines)
SIGNATURE = 32  # u64 at SIGNATURE + 8 * parity: what the collective posting in that slot is
POSTED_ROUND = 48  # u64 at POSTED_ROUND + 8 * parity: the round whose input is in that slot
REDUCED_ROUND = 64  # u64 at REDUCED_ROUND + 8 * parity: the round whose reduced slice it holds
ABANDONED = 128  # u64 at ABANDONED + seq % LOG_SIZE: seq << 4 | state (collectives given up on)
LOG_SIZE = 64
PENDING, WITHDRAWN, TIMED_OUT, FAILED = 1, 2, 3, 4  # states in the ABANDONED log
CONTROL_BYTES = 4096
SLOT_BYTES = 4 * 1024 * 1024
VIEW_CACHE_MAX_BYTES = 64 * 1024  # slot views of at most this size are kept for reuse
VIEW_CACHE_ENTRIES = 256
BLOCK_MS = 2  # the longest block on the doorbell before looking again
_FENCE = threading.Lock()  # acquiring a lock is a locked instruction: a full memory fence


def _fence() -> None:
    """Order this thread's earlier stores before its later loads (x86 only reorders those)."""
    _FENCE.acquire()
    _FENCE.release()


def sizes_header_bytes(world_size: int) -> int:
    """Bytes at the start of a slot holding a rank's alltoall block sizes, those it sends and
    those it expects (``2 * world_size`` int64, 64-byte aligned)."""
    return (world_size * 16 + 63) // 64 * 64


def _cores() -> int:
    """How many cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _spin_seconds(world_size: int) -> float:
    """How long a waiter polls before blocking: briefly when every rank has its own core."""
    return 200e-6 if world_size <= _cores() else 20e-6


def threads_per_rank(world_size: int) -> int:
    """The torch intra-op threads a rank's copies and reductions should use: its share of the
    cores (every rank of an arena runs on this host)."""
    return max(1, _cores() // world_size)


_LIBC = ctypes.CDLL(None, use_errno=True)
MADV_POPULATE_WRITE = 23  # Linux 5.14: fault every page of a range in, writable


def prefault(buf: memoryview) -> None:
    """Fault every page of the mapping ``buf`` in now (best effort), so that a collective does
    not pay for page faults on its first use of a slot."""
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    _LIBC.madvise(ctypes.c_void_p(address), ctypes.c_size_t(len(buf)), MADV_POPULATE_WRITE)


class ShmArena:
    """One rank's view of the group's segments: its own (``rank``) and every peer's."""

    def __init__(
        self,
        store: Store,
        rank: int,
        world_size: int,
        deadline: Deadline,
        failure: Callable[[list[int]], DistBackendError | None] = lambda _peers: None,
        slot_bytes: int = SLOT_BYTES,
    ) -> None:
        least = sizes_header_bytes(world_size) + 16 * world_size  # alltoall's sizes + 1 item
        if slot_bytes <= 0 or slot_bytes % 64 or slot_bytes < least:
            raise ValueError(
                f"slot_bytes must be a positive multiple of 64 and at least {least} for "
                f"{world_size} ranks, got {slot_bytes}"
            )
        self.rank = rank
        self.size = world_size
        self.slot_bytes = slot_bytes
        self.peers = [p for p in range(world_size) if p != rank]
        self.round = 0
        self.holder = 0  # the collective that last entered the arena
        self._failure = failure
        self._closed = False
        self._spin = _spin_seconds(world_size)
        self.threads = threads_per_rank(world_size)
        self._last_use = [0, 0]  # the round that last wrote each of this rank's slots
        self._signature = signature("barrier", torch.uint8, 0)
        self._segments: list[Segment | None] = [None] * world_size
        self._control: list[memoryview] = []
        self._heads: list[list[memoryview]] = []  # the first ``size`` int64s of every slot
        self._slots: list[list[torch.Tensor]] = []
        self._typed: dict[tuple[int, int, torch.dtype], torch.Tensor] = {}
        self._views: dict[tuple[int, torch.dtype, int], list[torch.Tensor]] = {}
        self._bells: list[bytes] = []
        self._bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._bell.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self._bell.fileno(), select.POLLIN)
        try:
            self._build(PrefixStore("arena", store), deadline)
        except BaseException:
            self.close()
            raise

    # -- setup ----------------------------------------------------------------------------------
    def _build(self, store: Store, deadline: Deadline) -> None:
        nonce = secrets.token_hex(6)
        self._bell.bind(f"\0pyc10d-{nonce}-arena-r{self.rank}".encode())
        size = CONTROL_BYTES + 2 * self.slot_bytes
        own = Segment.create(size)
        self._segments[self.rank] = own
        try:
            info = {"size": size, "bell": self._bell.getsockname().hex()}
            store.set(f"seg/{self.rank}", json.dumps(info))
            keys = [f"seg/{p}" for p in self.peers]
            wait_for_keys(store, keys, deadline, self.rank, "peers' arena segments")
            infos = {p: json.loads(store.get(f"seg/{p}")) for p in self.peers}
            for peer, peer_info in infos.items():
                if peer_info["size"] != size:
                    raise DistBackendError(
                        f"rank {peer}'s shared-memory segment is {peer_info['size']} bytes, "
                        f"expected {size} (ranks disagree on the slot size)"
                    )
            bells = {p: bytes.fromhex(info["bell"]) for p, info in infos.items()}
            for peer, fd in self._swap_fds(own.fd, bells, deadline).items():
                self._segments[peer] = Segment(fd)
        finally:
            own.release_fd()
        for owner, segment in enumerate(self._segments):
            assert segment is not None
            prefault(segment.buf)
            self._control.append(segment.buf[:CONTROL_BYTES].cast("Q"))
            self._heads.append(
                [
                    segment.buf[start : start + 16 * self.size].cast("q")
                    for start in (CONTROL_BYTES, CONTROL_BYTES + self.slot_bytes)
                ]
            )
            self._slots.append(
                [
                    torch.frombuffer(
                        segment.buf,
                        dtype=torch.uint8,
                        offset=CONTROL_BYTES + k * self.slot_bytes,
                        count=self.slot_bytes,
                    )
                    for k in (0, 1)
                ]
            )
            self._bells.append(self._bell.getsockname() if owner == self.rank else bells[owner])

    def _swap_fds(self, own_fd: int, bells: dict[int, bytes], deadline: Deadline) -> dict[int, int]:
        """Send ``own_fd`` to every peer's doorbell and receive theirs (SCM_RIGHTS): the memory
        is shared by descriptor, never by name. Sending and receiving interleave, so full socket
        queues (10 datagrams by default) cannot deadlock a large group."""
        key = load_key()  # with a key, only processes that know it can hand us a segment
        own_bell = self._bell.getsockname()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [own_fd]))]
        unsent, received = list(self.peers), {}
        try:
            while unsent or len(received) < len(self.peers):
                for peer in list(unsent):
                    try:
                        note = descriptor_note(key, self.rank, own_bell, bells[peer])
                        self._bell.sendmsg([note], rights, 0, bells[peer])
                    except BlockingIOError:
                        continue  # its queue is full: try again once it drained some
                    except OSError as exc:
                        raise DistBackendError(
                            f"rank {peer} is gone from the shared-memory arena setup ({exc}): "
                            "did it time out or exit?"
                        ) from None
                    unsent.remove(peer)
                self._receive_fds(received, key, bells)
                if not unsent and len(received) == len(self.peers):
                    break
                if deadline.expired():
                    missing = sorted(set(self.peers) - set(received)) or unsent
                    raise DistBackendError(
                        f"shared-memory arena setup on rank {self.rank} timed out after "
                        f"{format_ms(deadline.seconds)} exchanging segments with ranks {missing}"
                    )
                self._poll.poll(1)
        except BaseException:
            for fd in received.values():
                os.close(fd)
            raise
        return received

    def _receive_fds(
        self, received: dict[int, int], key: bytes | None, bells: dict[int, bytes]
    ) -> None:
        """Take every descriptor waiting on the doorbell into ``received`` (by sender rank);
        one whose note does not check out (see ``setup.descriptor_sender``) is closed unused."""
        own_bell = self._bell.getsockname()
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self._bell, 64, 4)
            except BlockingIOError:
                return
            peer = descriptor_sender(key, data, own_bell, bells) if fds else None
            if peer is None and fds:
                log.warning(
                    "shared-memory arena setup on rank %d: dropped a segment descriptor from "
                    "a process that did not authenticate as a peer",
                    self.rank,
                )
            if peer is not None and peer not in received:
                received[peer] = fds.pop(0)
            for fd in fds:
                os.close(fd)

    # -- rounds and slots -----------------------------------------------------------------------
    def begin(self, seq: int) -> None:
        """Start collective number ``seq``: its rounds follow every earlier collective's.

        Every earlier collective is over on this rank (they enter in issue order), so none of
        their rounds will be read here any more: released, even those of a collective that
        failed before it reached the arena.
        """
        self.holder = seq
        self.round = max(self.round, op_tag(seq))
        self._release_upto(op_tag(seq) - 1)

    def abandon(self, seq: int, timed_out: bool = False) -> None:
        """Give up collective ``seq`` (it failed here): mark it FAILED (TIMED_OUT) in this
        rank's log, and if it is the one in the arena, tell peers this rank reads none of its
        rounds any more, so a peer that arrives late is not kept from reusing its slots."""
        if self._closed:
            return
        if self._logged(self.rank, seq) != TIMED_OUT:
            self._mark(seq, TIMED_OUT if timed_out else FAILED)
        if self.holder == seq:
            self._release_upto(op_tag(seq + 1) - 1)

    def _mark(self, seq: int, state: int) -> None:
        """Write ``state`` for collective ``seq`` in this rank's ABANDONED log; fence."""
        self._control[self.rank][ABANDONED + seq % LOG_SIZE] = seq << 4 | state
        _fence()

    def _logged(self, owner: int, seq: int) -> int:
        """The state of collective ``seq`` in ``owner``'s ABANDONED log (0: none)."""
        entry = self._control[owner][ABANDONED + seq % LOG_SIZE]
        return entry & 15 if entry >> 4 == seq else 0

    def finish(self) -> None:
        """End the current collective after this rank's last post: raise if a peer gave up on
        it (waiting out one that is still deciding), so that no rank keeps its result then."""
        seq, index = self.holder, ABANDONED + self.holder % LOG_SIZE
        control = self._control
        for peer in self.peers:
            if control[peer][index] >> 4 != seq:
                continue
            state = self._logged(peer, seq)
            while state == PENDING:
                if self._closed:
                    raise DistBackendError("the shared-memory arena has been closed")
                failure = self._failure([peer])
                if failure is not None:
                    raise fresh_error(failure)
                os.sched_yield()
                state = self._logged(peer, seq)
            if state in (TIMED_OUT, FAILED):
                raise self._abandoned_error(peer, seq, state)

    def _abandoned_error(self, peer: int, seq: int, state: int) -> CollectiveAbandonedError:
        why = "timed out" if state == TIMED_OUT else "failed"
        err = CollectiveAbandonedError(
            f"rank {peer} gave up on collective #{seq} (it {why} there) before rank "
            f"{self.rank} finished it: no rank keeps its result",
            peer=peer,
            seq=seq,
        )
        err.blame, err.seconds, err.arrived = (), None, time.monotonic()
        err.reason = f"it {why} there" if state == TIMED_OUT else None  # failed: why is unknown
        return err

    def _check_abandoned(self, pending: list[int], deadline: Deadline, what: str) -> None:
        """Raise if a peer gave up on the current collective (for waits that are blocking): if
        one timed out and ranks that did not give up are still missing here, this wait times
        out too, naming them; otherwise the error names the rank that gave up."""
        seq = self.holder
        gave_up = {p: s for p in self.peers if (s := self._logged(p, seq)) in (TIMED_OUT, FAILED)}
        if not gave_up:
            return
        missing = [p for p in pending if p not in gave_up]
        if missing and TIMED_OUT in gave_up.values():
            raise _timeout(missing, what, seq, deadline)
        peer, state = next(iter(gave_up.items()))
        raise self._abandoned_error(peer, seq, state)

    def _release_upto(self, round_: int) -> None:
        if self._control[self.rank][RELEASED] < round_:
            self.publish(RELEASED, round_)

    def release(self, round_: int) -> None:
        """Publish that this rank has finished reading its peers' slots of ``round_``."""
        self.publish(RELEASED, round_)

    def next_round(self) -> int:
        """The number of the next round (every rank counts rounds the same way)."""
        self.round += 1
        return self.round

    def slot(self, owner: int, round_: int) -> torch.Tensor:
        """``owner``'s staging slot for ``round_`` as a uint8 tensor."""
        return self._slots[owner][round_ & 1]

    def typed(self, owner: int, round_: int, dtype: torch.dtype) -> torch.Tensor:
        """``owner``'s slot for ``round_`` as a 1-D tensor of ``dtype`` (cached views)."""
        key = (owner, round_ & 1, dtype)
        view = self._typed.get(key)
        if view is None:
            view = self._typed[key] = self._slots[owner][round_ & 1].view(dtype)
        return view

    def views(self, round_: int, dtype: torch.dtype, count: int) -> list[torch.Tensor]:
        """The first ``count`` elements of every rank's slot for ``round_``, in rank order
        (small ones are cached: slicing costs more than a small collective's copies)."""
        key = (round_ & 1, dtype, count)
        views = self._views.get(key)
        if views is None:
            views = [self.typed(owner, round_, dtype)[:count] for owner in range(self.size)]
            if count * dtype.itemsize <= VIEW_CACHE_MAX_BYTES:
                if len(self._views) >= VIEW_CACHE_ENTRIES:
                    self._views.clear()
                self._views[key] = views
        return views

    def head(self, owner: int, round_: int) -> memoryview:
        """The first ``2 * size`` int64 values of ``owner``'s slot for ``round_`` (small
        headers, such as alltoall's block sizes, without a tensor's overhead)."""
        return self._heads[owner][round_ & 1]

    def start_round(self, deadline: Deadline, what: str) -> int:
        """The next round, with this rank's slot for it claimed (see :meth:`claim`)."""
        self.round += 1
        self.claim(self.round, deadline, what)
        return self.round

    def claim(self, round_: int, deadline: Deadline, what: str) -> torch.Tensor:
        """This rank's slot for ``round_``, once every peer is done reading its previous use."""
        parity = round_ & 1
        self.wait(RELEASED, self._last_use[parity], self.peers, deadline, what)
        self._last_use[parity] = round_
        return self._slots[self.rank][parity]

    # -- what the ranks post must agree ----------------------------------------------------------
    def expect(self, sig: Signature) -> None:
        """Declare the collective about to run; a peer posting a different one is an error."""
        self._signature = sig

    def post(self, round_: int) -> None:
        """Publish that this rank's slot holds its part of ``round_`` (and what it posted)."""
        control, parity = self._control[self.rank], 8 * (round_ & 1)
        control[SIGNATURE + parity], control[SIGNATURE + parity + 1] = self._signature
        control[POSTED_ROUND + parity] = round_
        self.publish(POSTED, round_)

    def post_reduced(self, round_: int) -> None:
        """Publish that this rank's slot holds its reduced slice of ``round_``."""
        self._control[self.rank][REDUCED_ROUND + 8 * (round_ & 1)] = round_
        self.publish(REDUCED, round_)

    def wait_reduced(
        self, round_: int, peers: Sequence[int], deadline: Deadline, what: str
    ) -> None:
        """Wait until ``peers`` published their reduced slices of ``round_``."""
        self.wait(REDUCED, round_, peers, deadline, what)
        self._check_round(REDUCED_ROUND, round_, peers)

    def _check_round(self, marker: int, round_: int, peers: Sequence[int]) -> None:
        """DistBackendError unless every peer's slot holds ``round_`` (a peer that gave up on a
        collective moves on, and its later rounds must not pass for this one's)."""
        index = marker + 8 * (round_ & 1)
        for peer in peers:
            if self._control[peer][index] != round_:
                state = self._logged(peer, tag_seq(round_))
                if state in (TIMED_OUT, FAILED):
                    raise self._abandoned_error(peer, tag_seq(round_), state)
                raise DistBackendError(
                    f"rank {peer} left collective #{tag_seq(round_)} without its part of "
                    "it (it failed or timed out there)"
                )

    def wait_posted(self, round_: int, peers: Sequence[int], deadline: Deadline, what: str) -> None:
        """Wait until ``peers`` posted ``round_``; DistBackendError if one posted another
        collective (a different operation, dtype or size than this rank's)."""
        self.wait(POSTED, round_, peers, deadline, what)
        self._check_round(POSTED_ROUND, round_, peers)
        slot = SIGNATURE + 8 * (round_ & 1)
        what_, how = self._signature
        for peer in peers:
            control = self._control[peer]
            if control[slot] != what_ or control[slot + 1] != how:
                theirs = Signature(control[slot], control[slot + 1])
                if theirs.refused():
                    raise DistBackendError(
                        f"rank {peer} refused its part of {theirs.kind()}: "
                        f"{self._reason(peer, round_)}"
                    )
                raise DistBackendError(
                    mismatch_message(self.rank, self._signature, peer, theirs, tag_seq(round_))
                )

    def write_reason(self, round_: int, reason: bytes) -> None:
        """Put ``reason`` (why this rank refuses ``round_``'s collective) in its slot."""
        slot = self.slot(self.rank, round_)
        text = reason[: self.slot_bytes - 8]
        self.head(self.rank, round_)[0] = len(text)
        slot[8 : 8 + len(text)].copy_(torch.frombuffer(bytearray(text), dtype=torch.uint8))

    def _reason(self, peer: int, round_: int) -> str:
        """The reason ``peer`` put in its slot when it refused ``round_``'s collective."""
        length = max(0, min(self.head(peer, round_)[0], self.slot_bytes - 8))
        return byte_view(self.slot(peer, round_)[8 : 8 + length]).tobytes().decode(errors="replace")

    # -- signalling -----------------------------------------------------------------------------
    def publish(self, counter: int, round_: int) -> None:
        """Set this rank's ``counter`` to ``round_`` and wake peers that are blocked."""
        self._control[self.rank][counter] = round_
        _fence()
        for peer in self.peers:
            if self._control[peer][SLEEPING] == counter + 1:  # it waits on this counter
                try:
                    self._bell.sendto(b"!", self._bells[peer])
                except OSError:
                    pass  # its queue is full (it will look anyway) or it is gone

    def wait(
        self, counter: int, round_: int, peers: Sequence[int], deadline: Deadline, what: str
    ) -> None:
        """Return once every rank in ``peers`` has ``counter >= round_``.

        Raises TransportTimeout at ``deadline`` (naming the ranks still missing) and the group's
        failure (a dead peer) or an error once the arena is closed.
        """
        control = self._control
        pending = [p for p in peers if control[p][counter] < round_]
        if not pending:
            return
        spin_until = time.perf_counter() + self._spin
        while True:
            pending = [p for p in pending if control[p][counter] < round_]
            if not pending:
                return
            if time.perf_counter() < spin_until:
                os.sched_yield()
                continue
            self._block(counter, round_, pending, deadline, what)

    def _block(
        self, counter: int, round_: int, pending: list[int], deadline: Deadline, what: str
    ) -> None:
        """Sleep on the doorbell once (at most BLOCK_MS) unless a condition ends the wait.

        At the deadline (which wins over a failure seen at the same time) the collective is
        given up, or, if the counters arrived meanwhile, the wait just ends (see the module doc).
        """
        if self._closed:
            raise DistBackendError("the shared-memory arena has been closed")
        remaining = deadline.remaining()
        if remaining <= 0:
            self._give_up(counter, round_, pending, deadline, what)
            return
        failure = self._failure(pending)
        if failure is not None and remaining > DEADLINE_WINS_S:  # else: its deadline wins
            raise fresh_error(failure)
        self._check_abandoned(pending, deadline, what)
        own = self._control[self.rank]
        own[SLEEPING] = counter + 1
        _fence()
        try:
            if any(self._control[p][counter] < round_ for p in pending):
                wait_ms = BLOCK_MS if math.isinf(remaining) else min(BLOCK_MS, remaining * 1e3)
                if self._poll.poll(max(wait_ms, 0.05)):
                    try:
                        while self._bell.recv(64):
                            pass
                    except (BlockingIOError, OSError):
                        pass
        finally:
            own[SLEEPING] = 0

    def _give_up(
        self, counter: int, round_: int, pending: list[int], deadline: Deadline, what: str
    ) -> None:
        """The wait's deadline passed: mark the collective PENDING, look once more, and either
        withdraw (return: the counters are there) or mark it TIMED_OUT and raise."""
        seq = self.holder
        self._mark(seq, PENDING)
        control = self._control
        missing = [p for p in pending if control[p][counter] < round_]
        if not missing:
            self._mark(seq, WITHDRAWN)
            return
        self._mark(seq, TIMED_OUT)
        raise _timeout(missing, what, seq, deadline)

    # -- teardown -------------------------------------------------------------------------------
    def abort(self) -> None:
        """Make every current and later wait fail (the group is shutting down)."""
        self._closed = True

    def close(self) -> None:
        """Unmap every segment and close the doorbell; idempotent."""
        self._closed = True
        self._slots = []
        self._typed = {}
        self._views = {}
        for view in self._control + [v for pair in self._heads for v in pair]:
            view.release()
        self._control = []
        self._heads = []
        for index, segment in enumerate(self._segments):
            if segment is None:
                continue
            try:
                segment.close()
            except BufferError:  # a tensor over it is still alive: leave it mapped
                pass
            self._segments[index] = None
        self._bell.close()


def _timeout(missing: list[int], what: str, seq: int, deadline: Deadline) -> TransportTimeout:
    """The timeout of a wait for ``missing`` ranks in collective ``seq``."""
    ranks = ", ".join(map(str, missing))
    return TransportTimeout(
        f"rank(s) {ranks} in shared-memory {what} (collective #{seq})",
        deadline.seconds,
        tuple(missing),
    )


class Segment:
    """Shared memory made with ``memfd_create``, mapped read-write.

    It has no name: it is shared by passing its descriptor to the peers over a UNIX socket, and
    the kernel frees it when the last mapping goes, so nothing can be left in /dev/shm whatever
    happens to the processes (and no resource tracker is involved).
    """

    def __init__(self, fd: int, keep_fd: bool = False) -> None:
        try:
            self.size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, self.size)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd if keep_fd else -1
        if not keep_fd:
            os.close(fd)
        self.buf = memoryview(self._map)

    @classmethod
    def create(cls, size: int) -> Segment:
        """A new zero-filled segment of ``size`` bytes; its descriptor stays open to be shared
        (see :meth:`release_fd`)."""
        fd = os.memfd_create("pyc10d-arena", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, keep_fd=True)

    def release_fd(self) -> None:
        """Close the descriptor (the mapping stays); idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        """Unmap; BufferError while a tensor over the memory is still alive."""
        self.release_fd()
        self.buf.release()
        self._map.close()


def single_host(store: Store, rank: int, world_size: int, deadline: Deadline) -> bool:
    """True when every rank of the group runs on this rank's host (every rank must call this)."""
    peers = same_host_peers(PrefixStore("arena", store), rank, world_size, deadline)
    return len(peers) == world_size - 1


__all__ = ["SLOT_BYTES", "ShmArena", "single_host", "sizes_header_bytes"]
