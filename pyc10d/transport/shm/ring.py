"""A single-producer/single-consumer byte ring in a POSIX shared-memory segment.

Layout (every counter a u64 on its own 64-byte line, 8-byte aligned)::

    [0]    head: bytes ever written (producer)     [64]  tail: bytes ever read (consumer)
    [128]  sleeping: 1 while the consumer blocks    [256] data: CAPACITY bytes

The producer copies bytes in, then publishes ``head``; the consumer reads ``head``, then the bytes
(x86 keeps stores, and loads, in program order, so that suffices). Big copies go through torch
(``copy_`` releases the GIL); small ones through memoryview slices.

Segments bypass multiprocessing's resource tracker: every process unregisters a segment right
after creating or attaching it, and the creator unlinks it as soon as all producers attached.
"""

from __future__ import annotations

import warnings
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import torch

HEAD, TAIL, SLEEPING = 0, 8, 16  # indexes into the header's u64 view (64-byte lines)
HEADER_BYTES = 256
CAPACITY = 4 * 1024 * 1024
CHUNK = 256 * 1024  # counters are published at least this often during big copies
TORCH_MIN = 32 * 1024  # copies at least this big use torch

# torch warns about read-only buffers; the transport only ever reads from them.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


def byte_tensor(view: memoryview) -> torch.Tensor:
    """A uint8 tensor over ``view`` (no copy; ``view`` must be non-empty)."""
    return torch.frombuffer(view, dtype=torch.uint8)


def untrack(shm: SharedMemory) -> None:
    """Forget ``shm`` in the resource tracker (the transport unlinks it itself)."""
    try:
        resource_tracker.unregister(shm._name, "shared_memory")
    except Exception:
        pass


class Ring:
    """One mapped ring segment: header counters, the data area as a view and a tensor."""

    def __init__(self, shm: SharedMemory, creator: bool) -> None:
        self.shm = shm
        self.name = shm.name
        self.creator = creator
        self.unlinked = not creator
        buf = shm.buf
        self.hv = buf[:HEADER_BYTES].cast("Q")
        self.data = buf[HEADER_BYTES : HEADER_BYTES + CAPACITY]
        self.data_t = torch.frombuffer(buf, dtype=torch.uint8, offset=HEADER_BYTES, count=CAPACITY)

    @classmethod
    def create(cls, name: str) -> Ring:
        """Create (and map) a new zeroed segment called ``name``."""
        shm = SharedMemory(name, create=True, size=HEADER_BYTES + CAPACITY)
        untrack(shm)
        return cls(shm, creator=True)

    @classmethod
    def attach(cls, name: str) -> Ring:
        """Map the existing segment ``name``."""
        shm = SharedMemory(name)
        untrack(shm)
        if shm.size < HEADER_BYTES + CAPACITY:
            shm.close()
            raise ValueError(f"shared-memory segment {name} is too small ({shm.size} bytes)")
        return cls(shm, creator=False)

    def unlink(self) -> None:
        """Remove the segment's name (creator only; mappings stay valid); idempotent."""
        if self.unlinked:
            return
        self.unlinked = True
        resource_tracker.register(self.shm._name, "shared_memory")
        try:
            self.shm.unlink()  # unregisters again
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Unlink if still named, drop every view and unmap."""
        self.unlink()
        self.data_t = None  # type: ignore[assignment]
        for view in (self.hv, self.data):
            view.release()
        try:
            self.shm.close()
        except BufferError:  # a tensor over the buffer is still alive somewhere: leave it mapped
            pass

    def copy_in(self, pos: int, src: memoryview, src_t: torch.Tensor | None, off: int, n: int):
        """Copy ``src[off:off+n]`` to data position ``pos`` (no wrap)."""
        if src_t is not None and n >= TORCH_MIN:
            self.data_t[pos : pos + n].copy_(src_t[off : off + n])
        else:
            self.data[pos : pos + n] = src[off : off + n]

    def copy_out(self, pos: int, dst: memoryview, dst_t: torch.Tensor | None, off: int, n: int):
        """Copy data position ``pos`` (``n`` bytes, no wrap) to ``dst[off:off+n]``."""
        if dst_t is not None and n >= TORCH_MIN:
            dst_t[off : off + n].copy_(self.data_t[pos : pos + n])
        else:
            dst[off : off + n] = self.data[pos : pos + n]
