"""``OpContext``: what one collective needs to talk to its peers with its own tags."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import torch

from ..core.tags import op_tag
from ..core.tensor_bytes import byte_view
from ..core.timeouts import Deadline
from ..transport.base import Transport
from ..transport.shm.arena import ShmArena

PREPOST_MIN_BYTES = 256 * 1024  # from this size a receive is posted before the matching send

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
        self.arena.begin(self.seq)
        return self.arena

    def sub_operation(self, index: int) -> OpContext:
        """A context for part ``index`` of a coalesced collective, with its own message steps."""
        return replace(self, step_base=self.step_base + (index << 16))

    def send(self, peer: int, step: int, tensor: torch.Tensor) -> None:
        """Send a contiguous tensor's bytes to ``peer`` as message ``step``."""
        self.transport.send(
            peer, op_tag(self.seq, self.step_base + step), byte_view(tensor), self.deadline
        )

    def recv(self, peer: int, step: int, tensor: torch.Tensor) -> None:
        """Receive message ``step`` from ``peer`` into a contiguous tensor."""
        self.transport.recv(
            peer, op_tag(self.seq, self.step_base + step), byte_view(tensor), self.deadline
        )

    def send_recv(
        self, dst: int, send: torch.Tensor, src: int, recv: torch.Tensor, step: int
    ) -> None:
        """Send ``send`` to ``dst`` and receive ``recv`` from ``src`` as message ``step``.

        A large receive is posted first, from another thread, so the payload lands straight in
        ``recv`` instead of being buffered as unexpected and copied.
        """
        if recv.numel() * recv.element_size() < PREPOST_MIN_BYTES:
            self.send(dst, step, send)
            self.recv(src, step, recv)
            return
        receiving = _receive_pool().submit(self.recv, src, step, recv)
        try:
            self.send(dst, step, send)
        finally:
            receiving.result()

    def send_bytes(self, peer: int, step: int, data: bytes) -> None:
        """Send raw bytes (headers of variable-size exchanges)."""
        self.transport.send(peer, op_tag(self.seq, self.step_base + step), data, self.deadline)

    def recv_bytes(self, peer: int, step: int) -> bytes:
        """Receive raw bytes of any size."""
        return self.transport.recv_bytes(
            peer, op_tag(self.seq, self.step_base + step), self.deadline
        )
