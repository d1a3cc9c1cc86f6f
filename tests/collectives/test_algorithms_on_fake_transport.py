"""Layer tests of the message-passing collective algorithms, on an in-process fake transport.

Every rank of a group runs in a thread of this process and talks through :class:`FakeNetwork`:
in-memory queues matched by ``(source, tag)`` in FIFO order, with deadlines, ``discard``, ``close``
and injected peer failures, and a record of what each rank sent. No sockets, processes or shared
memory arena are involved (contexts carry ``arena=None``), so these tests pin down the algorithms
of ``pyc10d.collectives`` themselves: results against plain-torch references, bit-identical
reductions on every rank, every root, uneven sizes, both sides of every size threshold the
algorithms switch on, their message counts and volumes, and timeouts instead of hangs.

At this layer AVG and PREMUL_SUM reduce like SUM: the process group scales the inputs
(PREMUL_SUM) and divides the result (AVG) around the algorithm call.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
import torch

from pyc10d.collectives import allreduce as allreduce_algos
from pyc10d.collectives import broadcast as broadcast_algos
from pyc10d.collectives import context as context_module
from pyc10d.collectives import exchange
from pyc10d.collectives.context import PREPOST_MIN_BYTES, SIGNATURE_FORMAT, OpContext
from pyc10d.collectives.sparse import sparse_allreduce
from pyc10d.core.errors import DistBackendError, PeerFailedError, TransportTimeout
from pyc10d.core.reduce_op import ReduceOp
from pyc10d.core.tags import KINDS, PARTS, SIGNATURE_STEP, op_tag, tag_seq
from pyc10d.core.timeouts import Deadline
from pyc10d.transport.base import Buffer, Transport

DIRECT_MAX_BYTES = allreduce_algos.DIRECT_MAX_BYTES

OP_S = 10.0  # deadline of operations that should complete
SHORT_S = 0.2  # deadline of operations that should time out
JOIN_S = 20.0  # the most a test waits for its ranks: a hang fails the test, not the whole run
SEQ = 7  # the sequence number of the collective under test (its tags are op_tag(SEQ, step))

WORLDS = [1, 2, 3, 4]
MULTI = [2, 3, 4]
ROOTS = [(s, r) for s in WORLDS for r in range(s)]  # (world size, root): every root of each

FLOAT_OPS = [
    ReduceOp.SUM,
    ReduceOp.PRODUCT,
    ReduceOp.MIN,
    ReduceOp.MAX,
    ReduceOp.AVG,
    ReduceOp.PREMUL_SUM,
]
INT_OPS = [*FLOAT_OPS, ReduceOp.BAND, ReduceOp.BOR, ReduceOp.BXOR]
BOOL_OPS = [
    ReduceOp.SUM,
    ReduceOp.PRODUCT,
    ReduceOp.MIN,
    ReduceOp.MAX,
    ReduceOp.BAND,
    ReduceOp.BOR,
    ReduceOp.BXOR,
]
OPS_BY_DTYPE = {
    torch.float32: FLOAT_OPS,
    torch.float64: FLOAT_OPS,
    torch.int64: INT_OPS,
    torch.bool: BOOL_OPS,
}


def param_id(value: object) -> str:
    """Short test ids: ``float32``, ``SUM``, ``3``."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return getattr(value, "name", None) or str(value)


DTYPE_OPS = [
    pytest.param(dtype, op, id=f"{param_id(dtype)}-{param_id(op)}")
    for dtype, ops in OPS_BY_DTYPE.items()
    for op in ops
]

sparse_warning = pytest.mark.filterwarnings("ignore:Sparse invariant checks:UserWarning")


# -- the fake transport ----------------------------------------------------------------------------
def _fresh(err: DistBackendError) -> DistBackendError:
    """A copy of a stored error to raise (same class and attributes, a traceback of its own)."""
    new = err.__class__.__new__(err.__class__)
    new.__dict__.update(err.__dict__)
    new.args = err.args
    return new


SIGNATURE_BYTES = SIGNATURE_FORMAT.size  # the signature and its sender's deadline


def data_bytes(tag: int, payload: bytes) -> int | None:
    """The data a message carries; None for a signature message that carries none. Signature
    messages (every collective over a transport starts with them) carry data only for the small
    allreduce, whose data follows its signature."""
    if tag & 0xFFFF != SIGNATURE_STEP:
        return len(payload)
    if KINDS[payload[7]] == "allreduce" and len(payload) > SIGNATURE_BYTES:
        return len(payload) - SIGNATURE_BYTES
    return None


@dataclass
class RankStats:
    """What one rank sent and received through the fake network: data messages (signature
    messages are counted apart, in ``signatures``; see :func:`data_bytes`)."""

    signatures: int = 0
    sent_messages: int = 0
    sent_bytes: int = 0
    received_messages: int = 0
    received_bytes: int = 0
    sent_sizes: list[int] = field(default_factory=list)  # bytes of each message, in send order
    sent_to: list[int] = field(default_factory=list)  # destination of each message
    sent_tags: list[int] = field(default_factory=list)  # tag of each message
    tags: set[int] = field(default_factory=set)  # every tag it sent or received


class FakeNetwork:
    """In-memory queues shared by ``size`` ranks of one process: one :class:`FakeTransport` each.

    A message is copied at ``send`` into the queue of ``(dst, src, tag)`` and taken out in FIFO
    order by the matching receive; every state change happens under one condition variable.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.cond = threading.Condition()
        self.queues: dict[tuple[int, int, int], deque[tuple[int, bytes]]] = {}
        self.arrivals = itertools.count()
        self.discarded: list[set[int]] = [set() for _ in range(size)]
        self.errors: list[DistBackendError | None] = [None] * size
        self.stats = [RankStats() for _ in range(size)]
        self.transports = [FakeTransport(self, rank) for rank in range(size)]

    def crash(self, peer: int) -> None:
        """Simulate ``peer`` dying: every other rank's transport fails naming it."""
        with self.cond:
            for rank in range(self.size):
                if rank != peer and self.errors[rank] is None:
                    self.errors[rank] = PeerFailedError(peer, "crashed (fake network)")
            self.cond.notify_all()

    def close_all(self) -> None:
        """Close every rank's transport (wakes anything still waiting)."""
        for transport in self.transports:
            transport.close()

    def undelivered(self) -> dict[tuple[int, int, int], int]:
        """``{(dst, src, tag): count}`` of messages sent but never received."""
        with self.cond:
            return {key: len(queue) for key, queue in self.queues.items() if queue}


class FakeTransport(Transport):
    """Rank ``rank``'s endpoint of a :class:`FakeNetwork` (the full Transport interface)."""

    def __init__(self, network: FakeNetwork, rank: int) -> None:
        self.network = network
        self.rank = rank
        self.world_size = network.size

    @property
    def error(self) -> DistBackendError | None:
        """The error that failed this endpoint (closed, or a peer crashed), else None."""
        return self.network.errors[self.rank]

    def _check(self) -> None:
        """Raise this endpoint's error, if it failed (caller holds the network's lock)."""
        err = self.network.errors[self.rank]
        if err is not None:
            raise _fresh(err)

    def _check_peer(self, peer: int) -> None:
        """Reject peers outside the group and messages to oneself (no algorithm sends those)."""
        if not 0 <= peer < self.world_size or peer == self.rank:
            raise ValueError(f"rank {self.rank}: bad peer {peer} (world {self.world_size})")

    def send(self, dst: int, tag: int, data: Buffer, deadline: Deadline) -> None:
        """Copy ``data`` into ``dst``'s queue for ``(self.rank, tag)`` (never blocks)."""
        self._check_peer(dst)
        payload = bytes(data)
        net = self.network
        with net.cond:
            self._check()
            stats = net.stats[self.rank]
            stats.tags.add(tag)
            size = data_bytes(tag, payload)
            if size is None:
                stats.signatures += 1
            else:
                stats.sent_messages += 1
                stats.sent_bytes += size
                stats.sent_sizes.append(size)
                stats.sent_to.append(dst)
                stats.sent_tags.append(tag)
            if tag_seq(tag) in net.discarded[dst]:
                return
            key = (dst, self.rank, tag)
            net.queues.setdefault(key, deque()).append((next(net.arrivals), payload))
            net.cond.notify_all()

    def _take(self, srcs: Sequence[int], tag: int, deadline: Deadline) -> tuple[int, bytes]:
        """Pop the earliest ``tag`` message from one of ``srcs``, waiting until ``deadline``."""
        for src in srcs:
            self._check_peer(src)
        net = self.network
        with net.cond:
            while True:
                self._check()
                best = None
                for src in srcs:
                    queue = net.queues.get((self.rank, src, tag))
                    if queue and (best is None or queue[0][0] < best[1][0][0]):
                        best = (src, queue)
                if best is not None:
                    src, queue = best
                    payload = queue.popleft()[1]
                    stats = net.stats[self.rank]
                    stats.tags.add(tag)
                    size = data_bytes(tag, payload)
                    if size is not None:
                        stats.received_messages += 1
                        stats.received_bytes += size
                    return src, payload
                remaining = deadline.remaining()
                if remaining <= 0:
                    what = f"rank {srcs[0]}" if len(srcs) == 1 else f"any of ranks {list(srcs)}"
                    raise TransportTimeout(f"message {tag} from {what}", deadline.seconds)
                net.cond.wait(None if math.isinf(remaining) else remaining)

    def recv(self, src: int, tag: int, out: memoryview, deadline: Deadline) -> None:
        """Receive the next ``(src, tag)`` message into ``out``, which must be its size."""
        self.recv_any([src], tag, out, deadline)

    def recv_any(self, srcs: Sequence[int], tag: int, out: memoryview, deadline: Deadline) -> int:
        """Receive the earliest ``tag`` message from any of ``srcs`` into ``out``."""
        src, payload = self._take(srcs, tag, deadline)
        view = memoryview(out).cast("B")
        if view.nbytes != len(payload):
            raise DistBackendError(
                f"size mismatch for message {tag} from rank {src}: "
                f"expected {view.nbytes} bytes, got {len(payload)} bytes"
            )
        view[:] = payload
        return src

    def recv_bytes(self, src: int, tag: int, deadline: Deadline) -> bytes:
        """Receive the next ``(src, tag)`` message, whatever its size."""
        return self._take([src], tag, deadline)[1]

    def discard(self, seq: int) -> None:
        """Drop queued and future messages to this rank of collective ``seq``."""
        net = self.network
        with net.cond:
            net.discarded[self.rank].add(seq)
            for key in [k for k in net.queues if k[0] == self.rank and tag_seq(k[2]) == seq]:
                del net.queues[key]

    def close(self) -> None:
        """Fail this endpoint: pending and later calls raise; idempotent."""
        net = self.network
        with net.cond:
            if net.errors[self.rank] is None:
                net.errors[self.rank] = DistBackendError(f"rank {self.rank}: transport closed")
            net.cond.notify_all()


# -- running one collective on every rank ----------------------------------------------------------
@dataclass
class Outcome:
    """What each rank's call returned or raised, and the network it ran on."""

    network: FakeNetwork
    seq: int
    results: list[object]
    errors: list[BaseException | None]

    def values(self) -> list:
        """Every rank's result, after checking that no rank failed, that every message sent was
        received, and that every tag belongs to this collective."""
        for rank, err in enumerate(self.errors):
            if err is not None:
                raise AssertionError(f"rank {rank} raised {err!r}") from err
        assert self.network.undelivered() == {}
        for rank, stats in enumerate(self.network.stats):
            assert {tag_seq(tag) for tag in stats.tags} <= {self.seq}, f"rank {rank} tags"
        return self.results

    @property
    def stats(self) -> list[RankStats]:
        """Per-rank message records."""
        return self.network.stats


def run_ranks(
    size: int,
    body: Callable[[OpContext], object],
    *,
    seconds: float = OP_S,
    silent: Sequence[int] = (),
    network: FakeNetwork | None = None,
    seq: int = SEQ,
) -> Outcome:
    """Run ``body(ctx)`` for every rank of a ``size``-rank group in its own thread.

    Ranks in ``silent`` never call it (a peer that never sends). Each context has its own
    ``Deadline(seconds)`` and no arena. A rank still running after JOIN_S fails the test.
    """
    network = network if network is not None else FakeNetwork(size)
    results: list[object] = [None] * size
    errors: list[BaseException | None] = [None] * size

    def rank_main(rank: int) -> None:
        ctx = OpContext(network.transports[rank], rank, size, seq, Deadline(seconds), arena=None)
        try:
            results[rank] = body(ctx)
        except BaseException as exc:
            errors[rank] = exc

    threads = [
        threading.Thread(target=rank_main, args=(rank,), name=f"fake-rank-{rank}", daemon=True)
        for rank in range(size)
        if rank not in silent
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_S)
    hung = [thread.name for thread in threads if thread.is_alive()]
    if hung:
        network.close_all()
        pytest.fail(f"ranks still running after {JOIN_S}s: {hung}")
    return Outcome(network, seq, results, errors)


class PrepostCounter:
    """Counts receives posted ahead of their send (``OpContext.send_recv``'s large path)."""

    def __init__(self, pool: object) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.count = 0

    def submit(self, fn: Callable, *args: object) -> object:
        """Count, then hand the receive to the real pool."""
        with self.lock:
            self.count += 1
        return self.pool.submit(fn, *args)


@pytest.fixture
def preposts(monkeypatch: pytest.MonkeyPatch) -> PrepostCounter:
    """A counter of pre-posted receives, installed as the algorithms' receive pool."""
    counter = PrepostCounter(context_module._receive_pool())
    monkeypatch.setattr(context_module, "_receive_pool", lambda: counter)
    return counter


# -- data and references ---------------------------------------------------------------------------
def make_data(
    key: Sequence[int], numel: int, dtype: torch.dtype, kind: str = "wide"
) -> torch.Tensor:
    """Deterministic test data for ``key`` (rank, block, ...).

    ``wide``: integer values in [-1000, 1000] (floats too, so sums are exact in any order);
    ``small``: integers in [-3, 3] (products of four stay exact); ``random``: normal floats
    (the order of reduction shows in the bits; integers get ``wide``). Bools are random.
    """
    seed = 12345
    for part in (*key, numel):
        seed = (seed * 1_000_003 + part) % (2**31)
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(numel, generator=gen) < 0.5
    if kind == "random" and dtype.is_floating_point:
        return torch.randn(numel, generator=gen, dtype=dtype)
    bound = 3 if kind == "small" else 1000
    return torch.randint(-bound, bound + 1, (numel,), generator=gen).to(dtype)


def data_kind(op: object) -> str:
    """The data that keeps ``op`` exact and interesting: small values for products."""
    return "small" if op == ReduceOp.PRODUCT else "wide"


def _reference_step(op: object, acc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``acc (op) x`` with plain torch (AVG and PREMUL_SUM are sums at this layer)."""
    if op in (ReduceOp.SUM, ReduceOp.AVG, ReduceOp.PREMUL_SUM):
        return torch.logical_or(acc, x) if acc.dtype == torch.bool else torch.add(acc, x)
    if op == ReduceOp.PRODUCT:
        return torch.logical_and(acc, x) if acc.dtype == torch.bool else torch.mul(acc, x)
    plain = {
        ReduceOp.MIN: torch.minimum,
        ReduceOp.MAX: torch.maximum,
        ReduceOp.BAND: torch.bitwise_and,
        ReduceOp.BOR: torch.bitwise_or,
        ReduceOp.BXOR: torch.bitwise_xor,
    }
    return plain[op](acc, x)


def reference(op: object, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``tensors[0] (op) tensors[1] (op) ...``, folded in rank order."""
    return functools.reduce(functools.partial(_reference_step, op), tensors[1:], tensors[0].clone())


def bits(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor, for bit-identical comparisons (NaN- and -0.0-exact)."""
    return tensor.contiguous().numpy().tobytes()


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """``actual`` has ``expected``'s dtype, shape and exact bits."""
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert bits(actual) == bits(expected), f"{actual} != {expected}"


def ring_chunk_bounds(numel: int, size: int) -> tuple[int, int]:
    """The smallest and largest chunk ``torch.tensor_split(numel, size)`` makes."""
    return numel // size, -(-numel // size)


# -- allreduce -------------------------------------------------------------------------------------
def allreduce_numel(path: str, dtype: torch.dtype) -> int:
    """Elements of a buffer that takes ``path``: ``direct`` (small, not divisible by 2, 3 or 4),
    ``direct_max`` (exactly DIRECT_MAX_BYTES) or ``ring_min`` (one element more)."""
    at_limit = DIRECT_MAX_BYTES // torch.empty(0, dtype=dtype).element_size()
    return {"direct": 13, "direct_max": at_limit, "ring_min": at_limit + 1}[path]


def expected_allreduce_path(numel: int, itemsize: int, size: int) -> str:
    """Which algorithm the size rules call for: ``none``, ``direct`` or ``ring``."""
    if size == 1 or numel == 0:
        return "none"
    if numel * itemsize <= DIRECT_MAX_BYTES or numel < size:
        return "direct"
    return "ring"


def check_allreduce_traffic(out: Outcome, numel: int, itemsize: int, size: int) -> None:
    """Each rank's messages are those of the path its size calls for (counts and bytes)."""
    path = expected_allreduce_path(numel, itemsize, size)
    for rank, stats in enumerate(out.stats):
        if path == "none":
            assert stats.sent_messages == 0, rank
        elif path == "direct":
            assert stats.sent_sizes == [numel * itemsize] * (size - 1), rank
            assert sorted(stats.sent_to) == [p for p in range(size) if p != rank]
        else:
            low, high = ring_chunk_bounds(numel, size)
            assert stats.sent_messages == 2 * (size - 1), rank
            assert set(stats.sent_to) == {(rank + 1) % size}, rank
            assert all(low * itemsize <= n <= high * itemsize for n in stats.sent_sizes), rank
            # bandwidth-optimal: about 2 (N - 1) / N of the buffer leaves each rank
            share = stats.sent_bytes / (numel * itemsize)
            assert share == pytest.approx(2 * (size - 1) / size, rel=1e-3), rank
        assert stats.received_messages == stats.sent_messages, rank


@pytest.mark.parametrize("path", ["direct", "ring_min"])
@pytest.mark.parametrize(("dtype", "op"), DTYPE_OPS)
@pytest.mark.parametrize("size", WORLDS)
def test_allreduce_matches_reference(size: int, dtype: torch.dtype, op: object, path: str) -> None:
    """Every op and dtype, on both algorithms: every rank ends with the reference's exact bits."""
    numel = allreduce_numel(path, dtype)
    inputs = [make_data((rank,), numel, dtype, data_kind(op)) for rank in range(size)]

    def body(ctx: OpContext) -> torch.Tensor:
        flat = inputs[ctx.rank].clone()
        allreduce_algos.allreduce(ctx, flat, op)
        return flat

    out = run_ranks(size, body)
    expected = reference(op, inputs)
    for result in out.values():
        assert_same_bits(result, expected)
    check_allreduce_traffic(out, numel, inputs[0].element_size(), size)


ALLREDUCE_SIZES = {
    "empty": lambda n: 0,
    "one": lambda n: 1,
    "fewer_than_ranks": lambda n: n - 1,
    "not_divisible": lambda n: 4 * n + 1,
    "direct_max": lambda n: DIRECT_MAX_BYTES // 4,
    "ring_min": lambda n: DIRECT_MAX_BYTES // 4 + 1,
    "ring_uneven": lambda n: DIRECT_MAX_BYTES // 4 * 3 + 1,
    "prepost_below": lambda n: n * (PREPOST_MIN_BYTES // 4 - 1),
    "prepost_mixed": lambda n: n * (PREPOST_MIN_BYTES // 4) - 1,
    "prepost_at": lambda n: n * (PREPOST_MIN_BYTES // 4),
}


@pytest.mark.parametrize("case", list(ALLREDUCE_SIZES))
@pytest.mark.parametrize("size", WORLDS)
def test_allreduce_sizes_and_paths(size: int, case: str, preposts: PrepostCounter) -> None:
    """Sizes around every threshold (direct/ring, posted-first ring receives): exact sums,
    the traffic of the chosen algorithm, and pre-posted receives exactly for large chunks."""
    numel = ALLREDUCE_SIZES[case](size)
    inputs = [make_data((rank,), numel, torch.float32) for rank in range(size)]

    def body(ctx: OpContext) -> torch.Tensor:
        flat = inputs[ctx.rank].clone()
        allreduce_algos.allreduce(ctx, flat, ReduceOp.SUM)
        return flat

    out = run_ranks(size, body)
    expected = reference(ReduceOp.SUM, inputs)
    for result in out.values():
        assert_same_bits(result, expected)
    check_allreduce_traffic(out, numel, 4, size)
    ring_steps = size * 2 * (size - 1)
    low, high = ring_chunk_bounds(numel, size)
    if expected_allreduce_path(numel, 4, size) != "ring" or high * 4 < PREPOST_MIN_BYTES:
        assert preposts.count == 0
    elif low * 4 >= PREPOST_MIN_BYTES:
        assert preposts.count == ring_steps
    else:
        assert 0 < preposts.count < ring_steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=param_id)
@pytest.mark.parametrize("path", ["direct", "direct_max", "ring_min"])
@pytest.mark.parametrize("size", MULTI)
def test_allreduce_random_floats_bit_identical_on_every_rank(
    size: int, path: str, dtype: torch.dtype
) -> None:
    """With rounding in play every rank still gets the same bits; the direct path matches the
    rank-order fold exactly, the ring (which folds each chunk in ring order) matches closely."""
    numel = allreduce_numel(path, dtype)
    inputs = [make_data((rank,), numel, dtype, "random") for rank in range(size)]

    def body(ctx: OpContext) -> torch.Tensor:
        flat = inputs[ctx.rank].clone()
        allreduce_algos.allreduce(ctx, flat, ReduceOp.SUM)
        return flat

    results = run_ranks(size, body).values()
    for result in results[1:]:
        assert_same_bits(result, results[0])
    expected = reference(ReduceOp.SUM, inputs)
    if path == "ring_min":
        torch.testing.assert_close(results[0], expected)
    else:
        assert_same_bits(results[0], expected)


def allreduce_parts(ctx: OpContext, inputs: Sequence[torch.Tensor]) -> tuple[list, list[set]]:
    """Allreduce (SUM) each input as part ``i`` of one coalesced collective
    (``ctx.sub_operation(i)``), as the process group's coalesced collectives do; return the
    results and the set of tags this rank sent for each part."""
    sent_tags = ctx.transport.network.stats[ctx.rank].sent_tags  # appended by this thread only
    flats, tags = [], []
    for index, tensor in enumerate(inputs):
        flat, before = tensor.clone(), len(sent_tags)
        allreduce_algos.allreduce(ctx.sub_operation(index), flat, ReduceOp.SUM)
        flats.append(flat)
        tags.append(set(sent_tags[before:]))
    return flats, tags


def check_parts(out: Outcome, inputs: list[list[torch.Tensor]], seq: int) -> None:
    """Every part's result is exact, and no two parts of the collective share a tag, and every
    tag belongs to the collective (so ``discard(seq)`` drops all of them)."""
    size = len(inputs)
    for rank, (flats, tags) in enumerate(out.results):
        for index, flat in enumerate(flats):
            assert_same_bits(flat, reference(ReduceOp.SUM, [inputs[r][index] for r in range(size)]))
        for (i, a), (j, b) in itertools.combinations(enumerate(tags), 2):
            assert not a & b, f"rank {rank}: parts {i} and {j} share tags {sorted(a & b)}"
        assert {tag_seq(t) for part in tags for t in part} <= {seq}, f"rank {rank}"


@pytest.mark.parametrize("size", MULTI)
def test_allreduce_sub_operations_use_their_own_tags(size: int) -> None:
    """Parts of a coalesced collective each reduce their own buffer with tags of their own,
    whatever path each takes (an empty part sends nothing)."""
    numels = [5, DIRECT_MAX_BYTES // 4 + 3, 0, 1]
    inputs = [
        [make_data((rank, i), n, torch.float32) for i, n in enumerate(numels)]
        for rank in range(size)
    ]
    out = run_ranks(size, lambda ctx: allreduce_parts(ctx, inputs[ctx.rank]))
    for errors in out.errors:
        assert errors is None
    check_parts(out, inputs, SEQ)
    assert [len(tags) for tags in out.results[0][1]] == [1, 2 * (size - 1), 0, 1]


@pytest.mark.parametrize("seq", [6, 7], ids=["even_seq", "odd_seq"])
@pytest.mark.parametrize(
    "parts",
    [256, 257, PARTS],
)
def test_many_coalesced_parts_keep_distinct_tags_of_their_collective(parts: int, seq: int) -> None:
    """However many parts a coalesced collective has, their tags stay distinct and inside the
    collective's own tag space."""
    inputs = [[make_data((rank, i), 1, torch.int64) for i in range(parts)] for rank in range(2)]
    out = run_ranks(2, lambda ctx: allreduce_parts(ctx, inputs[ctx.rank]), seq=seq)
    assert out.errors == [None, None]
    check_parts(out, inputs, seq)


@pytest.mark.parametrize("seq", [6, 7], ids=["even_seq", "odd_seq"])
def test_signature_tag_of_coalesced_part_256_stays_in_its_collective(seq: int) -> None:
    """Every tag of part 256 of collective ``seq`` (its signature's first) must belong to
    ``seq``, so that ``discard(seq)`` drops a late one instead of collective ``seq + 1``
    matching it; part 256's signature tag is the next collective's (even ``seq``) or part 0's."""
    ctx = OpContext(FakeNetwork(2).transports[0], 0, 2, seq, Deadline(OP_S))
    part = ctx.sub_operation(256)
    tag = op_tag(seq, part.step_base + SIGNATURE_STEP)
    assert tag_seq(tag) == seq
    assert tag != op_tag(seq, SIGNATURE_STEP)


def test_parts_past_the_distinct_ones_reuse_tags_in_order_and_stay_exact() -> None:
    """Parts beyond PARTS reuse the first parts' tags (in order: each (source, tag) stream is
    FIFO and parts run one after another), never the next collective's; results stay exact."""
    seq, parts = 7, PARTS + 3
    inputs = [[make_data((rank, i), 1, torch.int64) for i in range(parts)] for rank in range(2)]
    out = run_ranks(2, lambda ctx: allreduce_parts(ctx, inputs[ctx.rank]), seq=seq)
    assert out.errors == [None, None]
    for rank, (flats, tags) in enumerate(out.results):
        for index, flat in enumerate(flats):
            assert_same_bits(flat, reference(ReduceOp.SUM, [inputs[r][index] for r in range(2)]))
        assert {tag_seq(t) for part in tags for t in part} == {seq}, rank
        assert tags[PARTS] == tags[0] and tags[PARTS + 2] == tags[2], rank
        assert len(set().union(*tags[:PARTS])) == PARTS * len(tags[0]), rank


# -- reduce ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("numel", [0, 1, 13, DIRECT_MAX_BYTES // 4 + 1])
@pytest.mark.parametrize(
    ("dtype", "op"),
    [
        (torch.float32, ReduceOp.SUM),
        (torch.float64, ReduceOp.MAX),
        (torch.int64, ReduceOp.BXOR),
        (torch.int64, ReduceOp.PRODUCT),
        (torch.bool, ReduceOp.SUM),
    ],
    ids=param_id,
)
@pytest.mark.parametrize(("size", "root"), ROOTS, ids=param_id)
def test_reduce_onto_every_root(
    size: int, root: int, dtype: torch.dtype, op: object, numel: int
) -> None:
    """The root gets the rank-order fold (exact bits, random floats); other ranks' buffers are
    untouched; each non-root sends its buffer once, to the root."""
    kind = "random" if dtype.is_floating_point else data_kind(op)
    inputs = [make_data((rank,), numel, dtype, kind) for rank in range(size)]

    def body(ctx: OpContext) -> torch.Tensor:
        flat = inputs[ctx.rank].clone()
        allreduce_algos.reduce(ctx, flat, op, root)
        return flat

    out = run_ranks(size, body)
    for rank, result in enumerate(out.values()):
        assert_same_bits(result, reference(op, inputs) if rank == root else inputs[rank])
        stats = out.stats[rank]
        if rank == root or size == 1 or numel == 0:
            assert stats.sent_messages == 0
        else:
            assert stats.sent_to == [root]
            assert stats.sent_sizes == [numel * inputs[0].element_size()]


# -- broadcast -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("dtype", "numel"),
    [
        (torch.float32, 0),
        (torch.float32, 1),
        (torch.int64, 7),
        (torch.bool, 9),
        (torch.float64, PREPOST_MIN_BYTES // 8 + 3),
    ],
    ids=param_id,
)
@pytest.mark.parametrize(("size", "root"), ROOTS, ids=param_id)
def test_broadcast_from_every_root(size: int, root: int, dtype: torch.dtype, numel: int) -> None:
    """Every rank ends with the root's bits; the binomial tree sends N - 1 messages in all, one
    to each non-root, and no rank sends more than ceil(log2 N)."""
    inputs = [make_data((rank,), numel, dtype, "random") for rank in range(size)]

    def body(ctx: OpContext) -> torch.Tensor:
        flat = inputs[ctx.rank].clone()
        broadcast_algos.broadcast(ctx, flat, root)
        return flat

    out = run_ranks(size, body)
    for result in out.values():
        assert_same_bits(result, inputs[root])
    if size == 1 or numel == 0:
        assert all(stats.sent_messages == 0 for stats in out.stats)
        return
    destinations = sorted(dst for stats in out.stats for dst in stats.sent_to)
    assert destinations == [r for r in range(size) if r != root]
    assert max(stats.sent_messages for stats in out.stats) <= math.ceil(math.log2(size))
    assert out.stats[root].received_messages == 0


# -- allgather -------------------------------------------------------------------------------------
F32_PREPOST = PREPOST_MIN_BYTES // 4  # float32 elements in a message that is posted first
I64_PREPOST = PREPOST_MIN_BYTES // 8  # the same in int64 elements
EXCHANGE_SIZES = [0, 1, 7, F32_PREPOST - 1, F32_PREPOST]


def uneven_sizes(size: int) -> list[int]:
    """Per-rank sizes that differ, straddle the posted-first threshold and include empty."""
    return [F32_PREPOST, 3, 0, F32_PREPOST - 1][:size]


@pytest.mark.parametrize("numel", EXCHANGE_SIZES)
@pytest.mark.parametrize("size", WORLDS)
def test_allgather_even(size: int, numel: int, preposts: PrepostCounter) -> None:
    """``recv[p]`` holds rank p's input on every rank; large inputs go pairwise with every
    receive posted first, small ones by direct sends."""
    inputs = [make_data((rank,), numel, torch.float32, "random") for rank in range(size)]

    def body(ctx: OpContext) -> list[torch.Tensor]:
        recv = [torch.full((numel,), -1.0) for _ in range(size)]
        exchange.allgather(ctx, inputs[ctx.rank].clone(), recv)
        return recv

    out = run_ranks(size, body)
    for recv in out.values():
        for peer in range(size):
            assert_same_bits(recv[peer], inputs[peer])
    for stats in out.stats:
        assert stats.sent_sizes == [numel * 4] * (size - 1)
    large = numel * 4 >= PREPOST_MIN_BYTES
    assert preposts.count == (size * (size - 1) if large else 0)


@pytest.mark.parametrize("size", MULTI)
def test_allgather_uneven_sizes_fail_every_rank(size: int) -> None:
    """Inputs of different sizes per rank are ranks disagreeing on the collective: every rank
    raises, naming itself and a rank that runs another size (their signatures differ)."""
    sizes = uneven_sizes(size)
    inputs = [make_data((rank,), sizes[rank], torch.float32, "random") for rank in range(size)]

    def body(ctx: OpContext) -> list[torch.Tensor]:
        recv = [torch.empty(sizes[peer]) for peer in range(size)]
        exchange.allgather(ctx, inputs[ctx.rank].clone(), recv)
        return recv

    check_mismatch_everywhere(run_ranks(size, body), "allgather")


def check_mismatch_everywhere(out: Outcome, kind: str) -> None:
    """Every rank raised the signature mismatch error of ``kind``, naming itself first."""
    for rank, err in enumerate(out.errors):
        assert isinstance(err, DistBackendError), (rank, err)
        assert str(err).startswith(f"rank {rank} ran {kind}"), (rank, err)
        assert "as collective #" in str(err), (rank, err)


# -- all-to-all ------------------------------------------------------------------------------------
def alltoall_sizes(size: int, pattern: str) -> list[list[int]]:
    """``sizes[i][j]``: elements rank i sends to rank j, for a named pattern."""
    if pattern == "even_small":
        return [[5] * size for _ in range(size)]
    if pattern == "even_large":
        return [[I64_PREPOST] * size for _ in range(size)]
    if pattern == "empty":
        return [[0] * size for _ in range(size)]
    # uneven: every block a different size, some empty, some posted first, some not
    choices = [0, 1, 6, I64_PREPOST - 1, I64_PREPOST, 11]
    return [[choices[(3 * i + j) % len(choices)] for j in range(size)] for i in range(size)]


@pytest.mark.parametrize("pattern", ["empty", "even_small", "even_large", "uneven"])
@pytest.mark.parametrize("size", WORLDS)
def test_alltoall(size: int, pattern: str, preposts: PrepostCounter) -> None:
    """Block j of rank i lands in ``recv[i]`` of rank j, whatever the block sizes."""
    sizes = alltoall_sizes(size, pattern)
    blocks = [
        [make_data((i, j), sizes[i][j], torch.int64) for j in range(size)] for i in range(size)
    ]

    def body(ctx: OpContext) -> list[torch.Tensor]:
        me = ctx.rank
        recv = [torch.empty(sizes[peer][me], dtype=torch.int64) for peer in range(size)]
        exchange.alltoall(ctx, [b.clone() for b in blocks[me]], recv)
        return recv

    out = run_ranks(size, body)
    for me, recv in enumerate(out.values()):
        for peer in range(size):
            assert_same_bits(recv[peer], blocks[peer][me])
        assert sorted(out.stats[me].sent_sizes) == sorted(
            sizes[me][j] * 8 for j in range(size) if j != me
        )
    if pattern == "even_large":
        assert preposts.count == size * (size - 1)
    elif pattern in ("even_small", "empty"):
        assert preposts.count == 0


# -- reduce-scatter --------------------------------------------------------------------------------
def check_reduce_scatter_even(
    size: int, dtype: torch.dtype, op: object, numel: int, preposts: PrepostCounter
) -> None:
    """Rank r gets block r of every rank folded in rank order (exact bits); one message to
    each peer; receives posted first exactly when blocks reach PREPOST_MIN_BYTES."""
    inputs = [
        [make_data((rank, block), numel, dtype, data_kind(op)) for block in range(size)]
        for rank in range(size)
    ]

    def body(ctx: OpContext) -> torch.Tensor:
        recv = torch.empty(numel, dtype=dtype)
        exchange.reduce_scatter(ctx, [t.clone() for t in inputs[ctx.rank]], recv, op)
        return recv

    out = run_ranks(size, body)
    for rank, recv in enumerate(out.values()):
        assert_same_bits(recv, reference(op, [inputs[p][rank] for p in range(size)]))
        assert out.stats[rank].sent_messages == size - 1
    large = numel * inputs[0][0].element_size() >= PREPOST_MIN_BYTES
    assert preposts.count == (size * (size - 1) if large else 0)


@pytest.mark.parametrize("numel", [0, 1, 6])
@pytest.mark.parametrize(("dtype", "op"), DTYPE_OPS)
@pytest.mark.parametrize("size", WORLDS)
def test_reduce_scatter_every_op(
    size: int, dtype: torch.dtype, op: object, numel: int, preposts: PrepostCounter
) -> None:
    """Every op and dtype on small blocks (empty, one element, a few)."""
    check_reduce_scatter_even(size, dtype, op, numel, preposts)


@pytest.mark.parametrize("numel", [I64_PREPOST - 1, I64_PREPOST], ids=["below", "at"])
@pytest.mark.parametrize("op", [ReduceOp.SUM, ReduceOp.BXOR], ids=param_id)
@pytest.mark.parametrize("size", MULTI)
def test_reduce_scatter_posted_first_threshold(
    size: int, op: object, numel: int, preposts: PrepostCounter
) -> None:
    """Blocks on both sides of the posted-first threshold (int64)."""
    check_reduce_scatter_even(size, torch.int64, op, numel, preposts)


@pytest.mark.parametrize("size", MULTI)
def test_reduce_scatter_uneven_random_floats(size: int) -> None:
    """Blocks of different sizes per destination (straddling the posted-first threshold), with
    random floats: each rank gets its block's exact rank-order sum."""
    sizes = uneven_sizes(size)
    inputs = [
        [make_data((rank, block), sizes[block], torch.float32, "random") for block in range(size)]
        for rank in range(size)
    ]

    def body(ctx: OpContext) -> torch.Tensor:
        recv = torch.empty(sizes[ctx.rank])
        exchange.reduce_scatter(ctx, [t.clone() for t in inputs[ctx.rank]], recv, ReduceOp.SUM)
        return recv

    for rank, recv in enumerate(run_ranks(size, body).values()):
        assert_same_bits(recv, reference(ReduceOp.SUM, [inputs[p][rank] for p in range(size)]))


@pytest.mark.parametrize("size", WORLDS)
def test_reduce_scatter_output_aliasing_own_input_block(size: int) -> None:
    """``recv`` may be a view of this rank's own input block (as ``_reduce_scatter_base`` with
    an output inside the input would make it): the result is still the full reduction."""
    numel = 5
    inputs = [make_data((rank,), numel * size, torch.int64) for rank in range(size)]

    def body(ctx: OpContext) -> torch.Tensor:
        source = inputs[ctx.rank].clone()
        blocks = list(torch.tensor_split(source, size))
        exchange.reduce_scatter(ctx, blocks, blocks[ctx.rank], ReduceOp.SUM)
        return blocks[ctx.rank].clone()

    for rank, recv in enumerate(run_ranks(size, body).values()):
        parts = [torch.tensor_split(inputs[p], size)[rank] for p in range(size)]
        assert_same_bits(recv, reference(ReduceOp.SUM, parts))


# -- gather / scatter ------------------------------------------------------------------------------


@pytest.mark.parametrize("uneven", [False, True], ids=["even", "uneven"])
@pytest.mark.parametrize(("size", "root"), ROOTS, ids=param_id)
def test_gather_onto_every_root(size: int, root: int, uneven: bool) -> None:
    """The root's ``recv[p]`` holds rank p's input; each non-root sends once, to the root.
    Inputs of different sizes fail every rank (their signatures differ) before data moves."""
    sizes = uneven_sizes(size) if uneven else [9] * size
    inputs = [make_data((rank,), sizes[rank], torch.float64, "random") for rank in range(size)]

    def body(ctx: OpContext) -> list[torch.Tensor]:
        recv = [torch.empty(sizes[p], dtype=torch.float64) for p in range(size)]
        exchange.gather(ctx, inputs[ctx.rank].clone(), recv if ctx.rank == root else [], root)
        return recv

    out = run_ranks(size, body)
    if uneven and len(set(sizes)) > 1:
        check_mismatch_everywhere(out, "gather")
        assert all(stats.sent_messages == 0 for stats in out.stats)
        return
    gathered = out.values()[root]
    for peer in range(size):
        assert_same_bits(gathered[peer], inputs[peer])
    for rank, stats in enumerate(out.stats):
        assert stats.sent_to == ([] if rank == root else [root])


@pytest.mark.parametrize("uneven", [False, True], ids=["even", "uneven"])
@pytest.mark.parametrize(("size", "root"), ROOTS, ids=param_id)
def test_scatter_from_every_root(size: int, root: int, uneven: bool) -> None:
    """Rank r receives the root's ``send[r]``; only the root sends, once to each other rank.
    Outputs of different sizes fail every rank (their signatures differ) before data moves."""
    sizes = uneven_sizes(size) if uneven else [9] * size
    blocks = [make_data((root, r), sizes[r], torch.int64) for r in range(size)]

    def body(ctx: OpContext) -> torch.Tensor:
        recv = torch.full((sizes[ctx.rank],), -1, dtype=torch.int64)
        send = [b.clone() for b in blocks] if ctx.rank == root else []
        exchange.scatter(ctx, send, recv, root)
        return recv

    out = run_ranks(size, body)
    if uneven and len(set(sizes)) > 1:
        check_mismatch_everywhere(out, "scatter")
        assert all(stats.sent_messages == 0 for stats in out.stats)
        return
    for rank, recv in enumerate(out.values()):
        assert_same_bits(recv, blocks[rank])
        if rank != root:
            assert out.stats[rank].sent_messages == 0
    assert sorted(out.stats[root].sent_to) == [r for r in range(size) if r != root]


# -- barrier ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", WORLDS)
def test_barrier_is_one_round_of_signatures(size: int) -> None:
    """Every rank passes; each rank sends every other rank its signature and no data."""
    out = run_ranks(size, exchange.barrier)
    out.values()
    for stats in out.stats:
        assert stats.sent_messages == 0
        assert stats.signatures == size - 1


@pytest.mark.parametrize(
    ("size", "absent"), [(s, a) for s in MULTI for a in range(s)], ids=param_id
)
def test_barrier_holds_everyone_while_one_rank_is_absent(size: int, absent: int) -> None:
    """No rank gets past the barrier while one rank never enters it: all time out."""
    out = run_ranks(size, exchange.barrier, seconds=SHORT_S, silent=[absent])
    for rank in range(size):
        if rank != absent:
            assert isinstance(out.errors[rank], TransportTimeout), (rank, out.errors[rank])


# -- sparse allreduce ------------------------------------------------------------------------------
def make_sparse(rank: int, shape: tuple[int, ...], sparse_dim: int, nnz: int, dtype: torch.dtype):
    """A deterministic, uncoalesced sparse COO tensor (duplicate indices likely)."""
    gen = torch.Generator().manual_seed(97 + rank * 31 + nnz)
    indices = torch.stack(
        [torch.randint(0, shape[d], (nnz,), generator=gen) for d in range(sparse_dim)]
    )
    values = torch.randint(-9, 10, (nnz, *shape[sparse_dim:]), generator=gen).to(dtype)
    return torch.sparse_coo_tensor(indices, values, shape)


SPARSE_CASES = {
    "1d": ((10,), 1, [3, 4, 0, 6], torch.float32),
    "2d": ((5, 4), 2, [6, 2, 7, 5], torch.float64),
    "hybrid": ((6, 3), 1, [4, 0, 5, 2], torch.float32),
    "int64": ((7, 2), 2, [5, 5, 5, 5], torch.int64),
    "all_empty": ((4, 4), 2, [0, 0, 0, 0], torch.float32),
}


@sparse_warning
@pytest.mark.parametrize("case", list(SPARSE_CASES))
@pytest.mark.parametrize("size", WORLDS)
def test_sparse_allreduce(size: int, case: str) -> None:
    """Every rank gets the same coalesced sum (exact: integer values) of every rank's sparse
    tensor, duplicates and empty contributions included."""
    shape, sparse_dim, nnzs, dtype = SPARSE_CASES[case]
    inputs = [make_sparse(r, shape, sparse_dim, nnzs[r], dtype) for r in range(size)]

    def body(ctx: OpContext) -> torch.Tensor:
        return sparse_allreduce(ctx, inputs[ctx.rank].clone())

    out = run_ranks(size, body)
    results = out.values()
    expected = functools.reduce(torch.add, [t.to_dense() for t in inputs])
    for result in results:
        assert result.is_sparse and result.is_coalesced()
        assert result.shape == torch.Size(shape) and result.dtype == dtype
        assert_same_bits(result.to_dense(), expected)
        assert_same_bits(result.indices(), results[0].indices())
        assert_same_bits(result.values(), results[0].values())
    for stats in out.stats:
        assert stats.sent_messages == 3 * (size - 1)


@sparse_warning
@pytest.mark.parametrize("size", MULTI)
def test_sparse_allreduce_random_floats_bit_identical(size: int) -> None:
    """With rounding in play every rank's coalesced sum still has the same bits."""
    inputs = []
    for rank in range(size):
        gen = torch.Generator().manual_seed(rank)
        indices = torch.randint(0, 3, (1, 40), generator=gen)
        inputs.append(torch.sparse_coo_tensor(indices, torch.randn(40, generator=gen), (3,)))

    def body(ctx: OpContext) -> torch.Tensor:
        return sparse_allreduce(ctx, inputs[ctx.rank])

    results = run_ranks(size, body).values()
    for result in results[1:]:
        assert_same_bits(result.values(), results[0].values())
    expected = functools.reduce(torch.add, [t.to_dense() for t in inputs])
    torch.testing.assert_close(results[0].to_dense(), expected)


# -- failures: a silent peer times out, a crashed peer is named ------------------------------------
def _allreduce_body(numel: int) -> Callable[[OpContext], object]:
    """An allreduce of ``numel`` float32 elements (SUM)."""
    return lambda ctx: allreduce_algos.allreduce(ctx, torch.ones(numel), ReduceOp.SUM)


def _sparse_body(ctx: OpContext) -> object:
    """A sparse allreduce of a one-element tensor."""
    return sparse_allreduce(ctx, torch.sparse_coo_tensor(torch.tensor([[0]]), [1.0], (2,)))


RING_PREPOST = 3 * F32_PREPOST  # a 3-rank ring whose chunks are all posted first
SILENT_CASES = {
    # name: (world, silent rank, body, ranks that need its data: every rank needs its signature,
    # so every other rank times out, these as much as the others)
    "allreduce_direct": (3, 2, _allreduce_body(9), {0, 1}),
    "allreduce_ring": (3, 1, _allreduce_body(DIRECT_MAX_BYTES // 4 + 1), {0, 2}),
    "allreduce_ring_prepost": (3, 0, _allreduce_body(RING_PREPOST), {1, 2}),
    "reduce": (
        3,
        1,
        lambda ctx: allreduce_algos.reduce(ctx, torch.ones(4), ReduceOp.SUM, 0),
        {0},
    ),
    "broadcast_root": (3, 0, lambda ctx: broadcast_algos.broadcast(ctx, torch.ones(4), 0), {1, 2}),
    "broadcast_subtree": (
        4,
        1,
        lambda ctx: broadcast_algos.broadcast(ctx, torch.ones(4), 0),
        {3},  # rank 1 forwards to rank 3 in the binomial tree; rank 2 hears from the root
    ),
    "allgather": (
        3,
        2,
        lambda ctx: exchange.allgather(ctx, torch.ones(3), [torch.empty(3) for _ in range(3)]),
        {0, 1},
    ),
    "allgather_pairwise": (
        3,
        1,
        lambda ctx: exchange.allgather(
            ctx, torch.ones(F32_PREPOST), [torch.empty(F32_PREPOST) for _ in range(3)]
        ),
        {0, 2},
    ),
    "alltoall": (
        3,
        0,
        lambda ctx: exchange.alltoall(
            ctx, [torch.ones(2) for _ in range(3)], [torch.empty(2) for _ in range(3)]
        ),
        {1, 2},
    ),
    "reduce_scatter_pairwise": (
        3,
        1,
        lambda ctx: exchange.reduce_scatter(
            ctx,
            [torch.ones(F32_PREPOST) for _ in range(3)],
            torch.empty(F32_PREPOST),
            ReduceOp.SUM,
        ),
        {0, 2},
    ),
    "gather": (
        3,
        2,
        lambda ctx: exchange.gather(
            ctx, torch.ones(2), [torch.empty(2) for _ in range(3)] if ctx.rank == 0 else [], 0
        ),
        {0},
    ),
    "scatter": (
        3,
        1,
        lambda ctx: exchange.scatter(
            ctx, [torch.ones(2) for _ in range(3)] if ctx.rank == 1 else [], torch.empty(2), 1
        ),
        {0, 2},
    ),
    "sparse": (3, 2, _sparse_body, {0, 1}),
}


@sparse_warning
@pytest.mark.parametrize("case", list(SILENT_CASES))
def test_silent_peer_times_out_instead_of_hanging(case: str) -> None:
    """A peer that never sends makes every other rank raise TransportTimeout at the deadline
    (every rank waits for every rank's signature, so none completes a collective a rank missed;
    the ranks that need the silent rank's data among them)."""
    size, silent, body, needs_it = SILENT_CASES[case]
    out = run_ranks(size, body, seconds=SHORT_S, silent=[silent])
    assert needs_it <= set(range(size)) - {silent}
    for rank in range(size):
        if rank != silent:
            assert isinstance(out.errors[rank], TransportTimeout), (rank, out.errors[rank])
            assert out.errors[rank].seconds == SHORT_S


CRASH_CASES = {
    "allreduce_direct": _allreduce_body(9),
    "allreduce_ring_prepost": _allreduce_body(RING_PREPOST),
    "broadcast": lambda ctx: broadcast_algos.broadcast(ctx, torch.ones(4), 1),
    "barrier": exchange.barrier,
}


@pytest.mark.parametrize("case", list(CRASH_CASES))
def test_crashed_peer_fails_the_others_naming_it(case: str) -> None:
    """When rank 1 dies instead of taking part, every other rank raises PeerFailedError naming
    rank 1 (long before its deadline; a hang would fail the test)."""
    network = FakeNetwork(3)
    body = CRASH_CASES[case]

    def crash_or_run(ctx: OpContext) -> object:
        if ctx.rank == 1:
            return network.crash(1)
        return body(ctx)

    out = run_ranks(3, crash_or_run, seconds=OP_S * 10, network=network)
    assert out.errors[1] is None
    for rank in (0, 2):
        assert isinstance(out.errors[rank], PeerFailedError), (rank, out.errors[rank])
        assert out.errors[rank].peer == 1


def test_late_messages_of_an_abandoned_collective_do_not_reach_the_next() -> None:
    """After ranks 0 and 1 time out waiting for rank 2 and discard that collective (as the
    process group does), rank 2's late messages for it are dropped, and the next collective
    (the next sequence number) is exact on every rank and leaves nothing behind."""
    network = FakeNetwork(3)
    first = run_ranks(3, _allreduce_body(5), seconds=SHORT_S, silent=[2], network=network)
    assert all(isinstance(first.errors[r], TransportTimeout) for r in (0, 1))
    for rank in (0, 1):
        network.transports[rank].discard(SEQ)
    # rank 2 arrives late: what ranks 0 and 1 sent is waiting for it, what it sends is dropped
    late = run_ranks(3, _allreduce_body(5), silent=[0, 1], network=network)
    assert late.errors[2] is None
    assert network.undelivered() == {}

    inputs = [make_data((rank,), 5, torch.float32) for rank in range(3)]

    def body(ctx: OpContext) -> torch.Tensor:
        flat = inputs[ctx.rank].clone()
        allreduce_algos.allreduce(ctx, flat, ReduceOp.SUM)
        return flat

    for result in run_ranks(3, body, network=network, seq=SEQ + 1).results:
        assert_same_bits(result, reference(ReduceOp.SUM, inputs))
    assert network.undelivered() == {}


# -- the fake transport itself ---------------------------------------------------------------------
def test_fake_transport_matches_by_source_and_tag_in_fifo_order() -> None:
    """The fake behaves as the Transport interface says, so the tests above mean something:
    FIFO per (source, tag), size checks, recv_any, recv_bytes, deadlines, close."""
    network = FakeNetwork(3)
    t0, t1, t2 = network.transports
    deadline = Deadline(OP_S)
    t1.send(0, op_tag(1, 0), b"first", deadline)
    t1.send(0, op_tag(1, 0), b"second", deadline)
    t2.send(0, op_tag(1, 0), b"two", deadline)
    t1.send(0, op_tag(1, 1), b"other-step", deadline)
    assert t0.recv_bytes(1, op_tag(1, 1), deadline) == b"other-step"
    out = bytearray(5)
    t0.recv(1, op_tag(1, 0), memoryview(out), deadline)
    assert out == b"first"
    with pytest.raises(DistBackendError, match="size mismatch"):
        t0.recv(1, op_tag(1, 0), memoryview(bytearray(3)), deadline)
    out = bytearray(3)
    assert t0.recv_any([1, 2], op_tag(1, 0), memoryview(out), deadline) == 2
    assert out == b"two"
    with pytest.raises(TransportTimeout, match="Timed out waiting 10ms"):
        t0.recv(2, op_tag(1, 0), memoryview(bytearray(1)), Deadline(0.01))
    with pytest.raises(ValueError):
        t0.send(0, op_tag(1, 0), b"self", deadline)
    t0.close()
    assert isinstance(t0.error, DistBackendError)
    with pytest.raises(DistBackendError, match="closed"):
        t0.recv_bytes(1, op_tag(1, 0), deadline)
    assert t1.error is None
