"""PowerSGD gradient compression for DDP (torch's ``ddp_comm_hooks.powerSGD_hook``).

PowerSGD (Vogels et al., https://arxiv.org/abs/1905.13727) sends a low-rank approximation
``M ~ P Q^T`` of each gradient matrix ``M`` instead of ``M``: two small allreduces (of ``P = M Q``
and of ``Q = M^T P``) replace one large one. :class:`PowerSGDState` holds the hyperparameters and
the per-bucket memory (error feedback, warm-started ``P``/``Q``); :func:`powerSGD_hook` compresses
layer by layer, :func:`batched_powerSGD_hook` the whole flat bucket as one square matrix.

Every collective a hook issues is issued from the thread that called it, in the same order on
every rank: the hook waits for the ``P`` allreduce before issuing the ``Q`` allreduce. (torch
issues the later allreduces from future callbacks; with our FIFO engine and several buckets in
flight that could order them differently on different ranks.)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ...api import all_reduce, get_world_size, group
from ...process_group import ProcessGroup
from . import default_hooks as default

if TYPE_CHECKING:
    from ...nn.parallel.grad_bucket import GradBucket

__all__ = ["PowerSGDState", "batched_powerSGD_hook", "powerSGD_hook"]

logger = logging.getLogger(__name__)

_SEED_BOUND = 1_000_000_000  # Q's seeds are drawn from [0, _SEED_BOUND), as in torch


def _seed_stream(seed: int) -> Any:
    """numpy's legacy ``RandomState(seed)``: torch draws the per-step seeds of Q from one.

    numpy is needed only here (as in torch's PowerSGD), so it is imported on first use.
    """
    try:
        import numpy
    except ImportError as error:
        raise ImportError(
            "PowerSGD draws its random seeds with numpy, as torch's does: pip install numpy"
        ) from error
    return numpy.random.RandomState(seed)


def _orthogonalize(matrices: torch.Tensor, epsilon: float = 0) -> None:
    """Orthonormalize the columns of each matrix of a ``(batch, n, r)`` tensor in place.

    As in torch: Gram-Schmidt for ``r <= 2`` and for half precision, QR otherwise.
    """
    if matrices.dim() != 3 or matrices.shape[2] > matrices.shape[1]:
        shape = tuple(matrices.shape)
        raise ValueError(f"expected a (batch, n, r) tensor with r <= n, got {shape}")
    if matrices.shape[2] <= 2 or matrices.dtype in (torch.float16, torch.bfloat16):
        _orthogonalize_gram_schmidt(matrices, epsilon)
    else:
        q, _ = torch.linalg.qr(matrices)
        matrices.copy_(q)


def _orthogonalize_gram_schmidt(matrices: torch.Tensor, epsilon: float = 0) -> None:
    """Gram-Schmidt on each matrix of a ``(batch, n, r)`` tensor, in place.

    ``epsilon`` is added to every column norm. With ``epsilon == 0`` an all-zero column is left
    as zeros and an error logged (what torch's code intends; its tensors produce NaN instead).
    """
    num_cols = matrices.shape[2]
    for i in range(num_cols):
        col = matrices[:, :, i : i + 1]
        norm = torch.linalg.vector_norm(col, dim=1, keepdim=True)
        if epsilon == 0:
            zero = norm == 0
            if bool(zero.any()):
                logger.error(
                    "The matrices to be orthogonalized has at least a column of all 0s. Please "
                    "set a small value such as 1e-8 as `orthogonalization_epsilon` in PowerSGD "
                    "state."
                )
                norm = norm.masked_fill(zero, 1)
            col /= norm
        else:
            col /= norm + epsilon
        if i + 1 < num_cols:
            rest = matrices[:, :, i + 1 :]
            rest -= torch.sum(col * rest, dim=1, keepdim=True) * col


def _should_compress(
    num_rows: int, num_cols: int, matrix_approximation_rank: int, min_compression_rate: float
) -> tuple[bool, int, int]:
    """(worth compressing, elements uncompressed, elements compressed) for an ``n x m`` matrix.

    Worth it when ``(n + m) * rank * min_compression_rate < n * m``, as in torch.
    """
    uncompressed = num_rows * num_cols
    compressed = (num_rows + num_cols) * matrix_approximation_rank
    return compressed * min_compression_rate < uncompressed, uncompressed, compressed


def _report_compression_stats(bucket: GradBucket, state: PowerSGDState) -> None:
    """Log the stats at the last bucket, every ``compression_stats_logging_frequency`` steps."""
    if bucket.is_last() and state.iter >= state.next_stats_report:
        rate, before, after = state.compression_stats()
        logger.info(
            "Compression stats: iter %s, total before compression %s, total after compression "
            "%s, rate %s",
            state.iter,
            before,
            after,
            rate,
        )
        state.next_stats_report = state.iter + state.compression_stats_logging_frequency


class PowerSGDState:
    """PowerSGD's hyperparameters and its state for every bucket (torch's ``PowerSGDState``).

    ``matrix_approximation_rank`` sets the compression (lower: stronger); plain allreduce runs
    until iteration ``start_powerSGD_iter``; a matrix is compressed only when that saves at least
    a factor ``min_compression_rate``. ``use_error_feedback`` adds each rank's compression error
    to its next gradient; ``warm_start`` reuses ``P``/``Q`` across iterations. ``random_seed`` must
    be the same on every rank (it seeds ``Q``). Pickling leaves out ``process_group``.
    """

    __slots__ = (
        "batch_tensors_with_same_shape",
        "compression_stats_logging_frequency",
        "error_dict",
        "iter",
        "matrix_approximation_rank",
        "min_compression_rate",
        "next_stats_report",
        "orthogonalization_epsilon",
        "p_memory_dict",
        "process_group",
        "q_memory_dict",
        "rng",
        "start_powerSGD_iter",
        "total_numel_after_compression",
        "total_numel_before_compression",
        "use_error_feedback",
        "warm_start",
    )

    def __init__(
        self,
        process_group: ProcessGroup | None,
        matrix_approximation_rank: int = 1,
        start_powerSGD_iter: int = 1_000,
        min_compression_rate: float = 2,
        use_error_feedback: bool = True,
        warm_start: bool = True,
        orthogonalization_epsilon: float = 0,
        random_seed: int = 0,
        compression_stats_logging_frequency: int = 10_000,
        batch_tensors_with_same_shape: bool = False,
    ) -> None:
        logger.info(
            "PowerSGD config: matrix_approximation_rank = %s; start_powerSGD_iter = %s; "
            "min_compression_rate = %s; orthogonalization_epsilon = %s; use_error_feedback = %s; "
            "warm_start = %s; random_seed = %s; compression_stats_logging_frequency = %s; "
            "batch_tensors_with_same_shape = %s",
            matrix_approximation_rank,
            start_powerSGD_iter,
            min_compression_rate,
            orthogonalization_epsilon,
            use_error_feedback,
            warm_start,
            random_seed,
            compression_stats_logging_frequency,
            batch_tensors_with_same_shape,
        )
        # Error feedback and warm start memorize tensors by bucket; DDP rebuilds its buckets
        # after the first iteration, so (as in torch) they need at least two plain iterations.
        if (use_error_feedback or warm_start) and start_powerSGD_iter <= 1:
            raise ValueError(
                "Expect `start_powerSGD_iter` > 1 if `use_error_feedback` or `warm_start` is "
                "enabled, because PowerSGD can only be applied after the first two iterations "
                "in DDP."
            )
        self.process_group = process_group
        self.matrix_approximation_rank = matrix_approximation_rank
        self.start_powerSGD_iter = start_powerSGD_iter
        self.min_compression_rate = min_compression_rate
        self.use_error_feedback = use_error_feedback
        self.warm_start = warm_start
        self.orthogonalization_epsilon = orthogonalization_epsilon
        self.batch_tensors_with_same_shape = batch_tensors_with_same_shape
        # Draws one seed per (re)initialization of Q: the same sequence on every rank.
        self.rng = _seed_stream(random_seed)
        self.error_dict: dict[int, torch.Tensor] = {}
        self.p_memory_dict: dict[int, torch.Tensor] = {}
        self.q_memory_dict: dict[int, torch.Tensor] = {}
        self.iter = 0
        self.total_numel_before_compression = 0
        self.total_numel_after_compression = 0
        self.compression_stats_logging_frequency = max(1, compression_stats_logging_frequency)
        self.next_stats_report = 0

    def __getstate__(self) -> dict[str, Any]:
        """Every field but ``process_group`` (not picklable), as torch saves it."""
        logger.warning("NOTE: Process group is not serializable and excluded from a saved state.")
        return {slot: getattr(self, slot) for slot in self.__slots__ if slot != "process_group"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the fields; ``process_group`` becomes the default group, as in torch."""
        self.process_group = group.WORLD
        logger.warning(
            "NOTE: Process group will be set to a default group (i.e. the world size). If a "
            "different group is desired, please set `self.process_group` after PowerSGD state "
            "is loaded."
        )
        for slot, value in state.items():
            setattr(self, slot, value)

    def maybe_increase_iter(self, bucket: GradBucket) -> None:
        """Count an iteration when the last bucket of one is processed (torch's behaviour)."""
        if bucket.is_last():
            self.iter += 1
            if self.iter == self.start_powerSGD_iter:
                logger.info("Start to apply PowerSGD after %s iterations.", self.iter)

    def compression_stats(self) -> tuple[float, int, int]:
        """``(compress_rate, numel_before_compression, numel_after_compression)`` so far.

        The rate is before / after (0 until something has been compressed), as in torch.
        """
        before = self.total_numel_before_compression
        after = self.total_numel_after_compression
        return (before / after if after > 0 else 0, before, after)


def _start_allreduce(
    tensor: torch.Tensor, process_group: ProcessGroup | None
) -> torch.futures.Future | None:
    """Start an in-place sum allreduce of ``tensor``; None (nothing sent) when it is empty."""
    if tensor.numel() == 0:
        return None
    return all_reduce(tensor, group=process_group, async_op=True).get_future()


def _wait(fut: torch.futures.Future | None) -> None:
    """Wait for an allreduce started by :func:`_start_allreduce`, re-raising its error."""
    if fut is not None:
        fut.wait()


def _after_all(
    futures: list[torch.futures.Future | None], callback: Callable[[], torch.Tensor]
) -> torch.futures.Future:
    """A future of ``callback()``, run once every future in ``futures`` has completed."""
    pending = [fut for fut in futures if fut is not None]
    if not pending:
        done: torch.futures.Future = torch.futures.Future()
        done.set_result([])
        pending = [done]

    def run(fut: torch.futures.Future) -> Any:
        for each in fut.value():
            each.value()  # re-raise a failed allreduce
        return callback()

    return torch.futures.collect_all(pending).then(run)


def _apply_error_feedback(
    state: PowerSGDState, bucket_index: int, tensor: torch.Tensor
) -> torch.Tensor | None:
    """Add the bucket's last local error to ``tensor``; a copy of the result (None without EF)."""
    if not state.use_error_feedback:
        return None
    if bucket_index in state.error_dict:
        tensor.add_(state.error_dict[bucket_index])
    else:
        logger.info(
            "A zero tensor of length %s that represents local error is created.", tensor.numel()
        )
        state.error_dict[bucket_index] = torch.zeros_like(tensor)
    return tensor.detach().clone()


def _finish_bucket(
    state: PowerSGDState,
    bucket: GradBucket,
    input_copy: torch.Tensor | None,
    output: torch.Tensor,
) -> None:
    """Memorize the local error, drop P/Q without warm start, and count the iteration."""
    index = bucket.index()
    if input_copy is not None:
        state.error_dict[index] = input_copy - output
    if not state.warm_start:
        # torch clears every bucket's entry here; this bucket's is enough (they are recreated
        # at every step anyway) and does not race with a hook already running for another one.
        state.p_memory_dict.pop(index, None)
        state.q_memory_dict.pop(index, None)
    state.maybe_increase_iter(bucket)


def _random_fill(state: PowerSGDState, tensors: list[torch.Tensor]) -> None:
    """Fill ``tensors`` in order with standard normals from one fresh seed of ``state.rng``.

    Each rank draws the same seed, hence the same values; the global RNG is left untouched.
    """
    generator = torch.Generator()
    generator.manual_seed(int(state.rng.randint(_SEED_BOUND)))
    for tensor in tensors:
        tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))


class _LowRank(NamedTuple):
    """Gradient matrices of one shape, stacked as ``(count, n, m)``, with their P and Q views."""

    matrices: torch.Tensor  # (count, n, m): M, overwritten by its approximation P Q^T
    p: torch.Tensor  # (count, n, rank), a view into the bucket's flat P memory
    q: torch.Tensor  # (count, m, rank), a view into the bucket's flat Q memory
    originals: list[torch.Tensor]  # what ``matrices`` stacks (copied back), or [] for a view


def _select_matrices(
    state: PowerSGDState, bucket: GradBucket
) -> tuple[list[torch.Tensor], list[torch.Tensor], int, int]:
    """Split the gradients into matrices worth compressing and the rest; count the stats.

    Returns ``(matrices, uncompressed, P size, Q size)``; each gradient is viewed as
    ``(shape[0], -1)``.
    """
    matrices: list[torch.Tensor] = []
    uncompressed: list[torch.Tensor] = []
    total_p_size = total_q_size = 0
    for tensor in bucket.gradients():
        n = tensor.shape[0] if tensor.dim() > 0 else 1
        m = tensor.numel() // n if n > 0 else 0
        rank = min(n, m, state.matrix_approximation_rank)
        worth_it, numel_before, numel_after = _should_compress(
            n, m, rank, state.min_compression_rate
        )
        state.total_numel_before_compression += numel_before
        if worth_it:
            matrices.append(tensor.view(n, m))
            total_p_size += n * rank
            total_q_size += m * rank
            state.total_numel_after_compression += numel_after
        else:
            uncompressed.append(tensor)
            state.total_numel_after_compression += numel_before
    return matrices, uncompressed, total_p_size, total_q_size


def _flatten(tensors: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """A flat copy of ``tensors`` concatenated (an empty tensor like ``like`` when none)."""
    return torch.cat([tensor.reshape(-1) for tensor in tensors]) if tensors else like.new_empty(0)


def _unflatten_average(flat: torch.Tensor, tensors: list[torch.Tensor], world_size: int) -> None:
    """Copy the allreduced ``flat`` back into ``tensors``, divided by ``world_size``."""
    if not tensors:
        return
    flat.div_(world_size)
    offset = 0
    for tensor in tensors:
        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
        offset += tensor.numel()


def _low_rank_memory(
    state: PowerSGDState, bucket_index: int, like: torch.Tensor, p_size: int, q_size: int
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The bucket's flat P and Q memories, and whether they are new (so Q needs random values).

    They are kept across iterations with warm start, made anew at every step without it.
    """
    fresh = not state.warm_start or bucket_index not in state.p_memory_dict
    if fresh:
        if state.warm_start:
            logger.info(
                "Allocating contiguous memory of length %s for Ps, and of length %s for Qs, "
                "respectively.",
                p_size,
                q_size,
            )
        state.p_memory_dict[bucket_index] = like.new_empty(p_size)
        state.q_memory_dict[bucket_index] = like.new_empty(q_size)
    return state.p_memory_dict[bucket_index], state.q_memory_dict[bucket_index], fresh


def _same_shape_batches(
    matrices: list[torch.Tensor], batch_same_shape: bool
) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """``(count, n, m)`` batches of ``matrices`` and what each stacks, grouped by shape.

    Matrices of one shape are processed together (stacked when ``batch_same_shape``), in the
    order torch uses, so P and Q are laid out and seeded as torch lays them out.
    """
    by_shape: dict[torch.Size, list[torch.Tensor]] = {}
    for matrix in matrices:
        by_shape.setdefault(matrix.shape, []).append(matrix)
    for same_shape in by_shape.values():
        if batch_same_shape and len(same_shape) > 1:
            yield torch.stack(same_shape), same_shape
        elif batch_same_shape:
            yield same_shape[0].unsqueeze(0), []
        else:
            for matrix in same_shape:
                yield matrix.unsqueeze(0), []


def _low_rank_views(
    state: PowerSGDState,
    matrices: list[torch.Tensor],
    p_memory: torch.Tensor,
    q_memory: torch.Tensor,
) -> list[_LowRank]:
    """The batches of ``matrices`` with their P and Q, laid out in order in the flat memories."""
    work: list[_LowRank] = []
    p_offset = q_offset = 0
    for batch, originals in _same_shape_batches(matrices, state.batch_tensors_with_same_shape):
        count, n, m = batch.shape
        rank = min(n, m, state.matrix_approximation_rank)
        p = p_memory[p_offset : p_offset + count * n * rank].view(count, n, rank)
        q = q_memory[q_offset : q_offset + count * m * rank].view(count, m, rank)
        p_offset += count * n * rank
        q_offset += count * m * rank
        work.append(_LowRank(batch, p, q, originals))
    return work


def _prepare_qs(state: PowerSGDState, work: list[_LowRank], fresh: bool) -> None:
    """Fill new Qs with seeded random values, then orthogonalize every Q."""
    qs = [item.q for item in work]
    if fresh:
        _random_fill(state, qs)
    for q in qs:
        _orthogonalize(q, state.orthogonalization_epsilon)


def _compute_ps(work: list[_LowRank]) -> None:
    """``P = M Q`` for every batch."""
    for item in work:
        torch.bmm(item.matrices, item.q, out=item.p)


def _compute_qs(state: PowerSGDState, work: list[_LowRank]) -> None:
    """Orthogonalize the allreduced P, then ``Q = M^T P`` for every batch."""
    for item in work:
        _orthogonalize(item.p, state.orthogonalization_epsilon)
        torch.bmm(item.matrices.transpose(1, 2), item.p, out=item.q)


def _decompress(work: list[_LowRank]) -> None:
    """``M = P Q^T`` for every batch, copying stacked matrices back to the bucket."""
    for item in work:
        torch.bmm(item.p, item.q.transpose(1, 2), out=item.matrices)
        for i, original in enumerate(item.originals):
            original.copy_(item.matrices[i])


def powerSGD_hook(state: PowerSGDState, bucket: GradBucket) -> torch.futures.Future:
    """Layer-wise PowerSGD compression of the bucket's gradients (torch's ``powerSGD_hook``).

    Plain averaging allreduce until ``state.start_powerSGD_iter``. Then each gradient, viewed as
    ``(shape[0], -1)``, is either allreduced as is (vectors, and matrices that would not compress
    by ``min_compression_rate``) or compressed: ``P = M Q``, allreduce ``P``, orthogonalize,
    ``Q = M^T P``, allreduce ``Q``, ``M ~ P Q^T / world_size``. The future holds the buffer.
    """
    process_group = state.process_group
    world_size = get_world_size(process_group)
    input_tensor = bucket.buffer()

    if state.iter < state.start_powerSGD_iter:
        state.maybe_increase_iter(bucket)
        return default._allreduce_fut(process_group, input_tensor)

    bucket_index = bucket.index()
    input_copy = _apply_error_feedback(state, bucket_index, input_tensor)

    # Step I: split the gradients into those worth compressing (as matrices) and the rest.
    matrices, uncompressed, total_p_size, total_q_size = _select_matrices(state, bucket)
    _report_compression_stats(bucket, state)

    # Step II: the uncompressed gradients go out at once, as one flat tensor.
    uncompressed_memory = _flatten(uncompressed, input_tensor)
    uncompressed_fut = _start_allreduce(uncompressed_memory, process_group)

    # Step III: compress the rest. P and Q live in one flat tensor each (one allreduce each).
    p_memory, q_memory, fresh = _low_rank_memory(
        state, bucket_index, input_tensor, total_p_size, total_q_size
    )
    work = _low_rank_views(state, matrices, p_memory, q_memory)
    _prepare_qs(state, work, fresh)
    _compute_ps(work)
    # P is orthogonalized next, so its sum needs no division by world_size.
    _wait(_start_allreduce(p_memory, process_group))
    _compute_qs(state, work)
    q_fut = _start_allreduce(q_memory, process_group)

    def decompress() -> torch.Tensor:
        """Average the uncompressed gradients, decompress the others, finish the bucket."""
        _unflatten_average(uncompressed_memory, uncompressed, world_size)
        q_memory.div_(world_size)
        _decompress(work)
        _finish_bucket(state, bucket, input_copy, input_tensor)
        return input_tensor

    return _after_all([uncompressed_fut, q_fut], decompress)


def batched_powerSGD_hook(state: PowerSGDState, bucket: GradBucket) -> torch.futures.Future:
    """PowerSGD on the whole flat bucket, zero-padded to a square (torch's batched variant).

    Faster than :func:`powerSGD_hook` but usually much less accurate unless the rank is 1:
    ``M ~ P Q^T`` with ``P = M Q``, ``Q = M^T P`` allreduced as in the layer-wise hook, plain
    allreduce until ``state.start_powerSGD_iter``. The future holds the buffer.
    """
    process_group = state.process_group
    world_size = get_world_size(process_group)
    input_tensor = bucket.buffer()

    if state.iter < state.start_powerSGD_iter:
        state.maybe_increase_iter(bucket)
        return default._allreduce_fut(process_group, input_tensor)

    total_length = input_tensor.shape[0]
    side = math.ceil(math.sqrt(total_length))
    rank = min(side, state.matrix_approximation_rank)
    state.total_numel_before_compression += total_length
    state.total_numel_after_compression += side * rank * 2
    _report_compression_stats(bucket, state)

    # torch resizes the bucket's buffer in place; a padded working copy leaves the buffer alone.
    padded_length = side * side
    if padded_length == total_length:
        padded = input_tensor
    else:
        padded = input_tensor.new_zeros(padded_length)
        padded[:total_length].copy_(input_tensor)
    bucket_index = bucket.index()
    input_copy = _apply_error_feedback(state, bucket_index, padded)
    matrix = padded.view(side, side)

    if not state.warm_start or bucket_index not in state.p_memory_dict:
        if state.warm_start:
            logger.info(
                "Initializing low-rank tensors P and Q, each of which has a shape of %s x %s.",
                side,
                rank,
            )
        state.p_memory_dict[bucket_index] = input_tensor.new_empty(side, rank)
        state.q_memory_dict[bucket_index] = input_tensor.new_empty(side, rank)
        _random_fill(state, [state.q_memory_dict[bucket_index]])
    p = state.p_memory_dict[bucket_index]
    q = state.q_memory_dict[bucket_index]
    _orthogonalize(q.unsqueeze(0), state.orthogonalization_epsilon)

    torch.matmul(matrix, q, out=p)
    _wait(_start_allreduce(p, process_group))
    _orthogonalize(p.unsqueeze(0), state.orthogonalization_epsilon)
    torch.matmul(matrix.t(), p, out=q)
    q_fut = _start_allreduce(q, process_group)

    def decompress() -> torch.Tensor:
        q.div_(world_size)
        torch.matmul(p, q.t(), out=matrix)
        if padded is not input_tensor:
            input_tensor.copy_(padded[:total_length])
        _finish_bucket(state, bucket, input_copy, padded)
        return input_tensor

    return _after_all([q_fut], decompress)
