"""Layer 3 — collective algorithms: pure functions over a transport, chosen by size and world size.

Each takes an :class:`OpContext` (the transport, this rank, the group size, the operation's tag
sequence number and deadline) and contiguous CPU tensors, and moves bytes with the context's
``send``/``recv``. Reductions run as in-place torch ops, in rank order on every rank, so every
rank ends with bit-identical results.
"""

from .context import OpContext
from .reduction import reduce_into

__all__ = ["OpContext", "reduce_into"]
