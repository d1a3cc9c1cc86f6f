"""``TorchWork``: a pyc10d :class:`~pyc10d.process_group.work.Work` as a ``torch.distributed.Work``.

torch's C++ callers (DDP's reducer, functional collectives) need a real ``c10d::Work``; pybind's
trampoline forwards ``wait`` and ``get_future`` to this Python subclass, which forwards them to
pyc10d's Work. (``_create_work_from_future`` is not used: its wait blocks on the future, while
pyc10d runs a still-queued operation inline in the waiting thread, which would deadlock.)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as torch_dist

from ..process_group.work import Work


class TorchWork(torch_dist.Work):
    """torch's Work API over a pyc10d Work: same results, errors and futures."""

    def __init__(self, work: Work) -> None:
        super().__init__()
        self.work = work

    def wait(self, timeout: timedelta = timedelta(0)) -> bool:
        """Block until done and re-raise its error; a nonzero ``timeout`` bounds the wait."""
        return self.work.wait(timeout if timeout else None)

    def get_future(self) -> torch.futures.Future:
        """A future completed with the operation's outputs (Gloo's values)."""
        return self.work.get_future()

    def is_completed(self) -> bool:
        """True once the operation finished."""
        return self.work.is_completed()

    def is_success(self) -> bool:
        """True if it finished without error."""
        return self.work.is_success()

    def exception(self) -> BaseException | None:
        """The error it failed with, or None."""
        return self.work.exception()

    def result(self) -> list[Any]:
        """The output tensors (waits first)."""
        return self.work.result()

    def source_rank(self) -> int:
        """For ``recv_anysource``: the sender's rank."""
        return self.work.source_rank()

    def _source_rank(self) -> int:
        """torch's private spelling of :meth:`source_rank`."""
        return self.work.source_rank()

    def synchronize(self) -> None:
        """No-op on CPU."""

    def __repr__(self) -> str:
        return repr(self.work)
