"""``pyc10d.dist2``: torch's experimental object-oriented group API (``torch.distributed._dist2``).

Groups made here are independent of the module-level API: :func:`new_group` rendezvouses through
``env://`` (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``) and returns a
:class:`~pyc10d.ProcessGroup` that ``init_process_group``'s registry never sees. A group is
used through its own methods (``pg.allreduce(t, timeout=...)``, torch's short forms), split with
``pg.split_group(ranks, ...)`` and joined with groups of other jobs with
``pg.merge_remote_group(store, size, timeout, ...)``. :func:`process_group` makes a group the
thread's current one (:func:`current_process_group`).

Backends are factories registered by name (:func:`register_backend`): ``"gloo"`` (torch's name,
no extra arguments, as torch's) and ``"pyc10d"`` (the same engine; keyword arguments set fields
of :class:`~pyc10d.ProcessGroup.Options`, as torch's ``"nccl"`` factory does with its options).
Both run pyc10d's own engine: there is no NCCL.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from contextlib import contextmanager
from datetime import timedelta
from typing import Protocol

import torch

from .core.reduce_op import ReduceOp
from .core.timeouts import to_timedelta
from .process_group import ProcessGroup
from .process_group.options import Options
from .process_group.process_group import SERVED_DEVICES
from .process_group.split import merge_remote_group, split_group
from .rendezvous import rendezvous
from .store import Store

__all__ = [
    "ProcessGroup",
    "ProcessGroupFactory",
    "ReduceOp",
    "current_process_group",
    "merge_remote_group",
    "new_group",
    "process_group",
    "register_backend",
    "split_group",
]


class ProcessGroupFactory(Protocol):
    """What :func:`register_backend` takes: makes a group of ``world_size`` ranks over ``store``
    (torch's ``ProcessGroupFactory``)."""

    def __call__(
        self,
        store: Store,
        rank: int,
        world_size: int,
        timeout: timedelta,
        device: torch.device,
        **kwargs: object,
    ) -> ProcessGroup: ...


_BACKENDS: dict[str, ProcessGroupFactory] = {}

_current = threading.local()


def register_backend(name: str, func: ProcessGroupFactory) -> None:
    """Make ``new_group(backend=name, ...)`` build its group with ``func`` (torch's).

    ``func(store, rank, world_size, timeout, device, **kwargs)`` returns the group.
    ValueError, torch's "Backend <name> already registered", for a name already taken.
    """
    if name in _BACKENDS:
        raise ValueError(f"Backend {name} already registered")
    _BACKENDS[name] = func


def _check_device(backend: str, device: torch.device) -> None:
    if device.type not in SERVED_DEVICES:
        raise ValueError(
            f"dist2 backend {backend!r} runs on pyc10d's engine, which serves "
            f"{' and '.join(sorted(SERVED_DEVICES))} tensors, not device {str(device)!r}"
        )


def _pyc10d_factory(
    store: Store,
    rank: int,
    world_size: int,
    timeout: timedelta,
    device: torch.device,
    **kwargs: object,
) -> ProcessGroup:
    """The ``"pyc10d"`` backend: a pyc10d group; ``kwargs`` set fields of its Options
    (``threads``, ``bind_host``, ``advertise_host``...); KeyError "Unknown option <k>" (torch's
    ``"nccl"`` factory's) for any other name."""
    _check_device("pyc10d", device)
    options = Options(timeout=timeout)
    for key, value in kwargs.items():
        if key.startswith("_") or not hasattr(options, key):
            raise KeyError(f"Unknown option {key}")
        setattr(options, key, value)
    pg = _make(store, rank, world_size, options)
    return pg


def _gloo_factory(
    store: Store,
    rank: int,
    world_size: int,
    timeout: timedelta,
    device: torch.device,
    **kwargs: object,
) -> ProcessGroup:
    """The ``"gloo"`` backend: a pyc10d group (pyc10d's engine, not torch's Gloo). As torch's, it
    takes no extra arguments: AssertionError "Gloo backend received unexpected kwargs"."""
    if kwargs:
        raise AssertionError(f"Gloo backend received unexpected kwargs: {sorted(kwargs)}")
    _check_device("gloo", device)
    return _make(store, rank, world_size, Options(timeout=timeout))


def _make(store: Store, rank: int, world_size: int, options: Options) -> ProcessGroup:
    """A pyc10d group over ``store``.

    Sequence numbers start at 0 on every rank, so there is nothing for torch's
    ``_set_sequence_number_for_group()`` to agree on.
    """
    return ProcessGroup(store, rank, world_size, options)


register_backend("gloo", _gloo_factory)
register_backend("pyc10d", _pyc10d_factory)


def new_group(
    backend: str,
    timeout: timedelta,
    device: str | torch.device,
    **kwargs: object,
) -> ProcessGroup:
    """A new group of every process of the job, not registered with the module-level API
    (torch's ``_dist2.new_group``).

    The processes meet through ``env://`` (``MASTER_ADDR``/``MASTER_PORT``/``RANK``/
    ``WORLD_SIZE``), which must finish within ``timeout``; the store keeps ``timeout`` and the
    group's calls default to it. ``kwargs`` go to the backend's factory. ValueError, torch's
    "Backend <name> not registered" (with the registered names), for an unknown ``backend``.
    """
    if backend not in _BACKENDS:
        raise ValueError(
            f"Backend {backend} not registered (registered dist2 backends: {sorted(_BACKENDS)})"
        )
    device = torch.device(device)
    timeout = to_timedelta(timeout)
    store, rank, world_size = next(iter(rendezvous("env://", timeout=timeout)))
    store.set_timeout(timeout)
    return _BACKENDS[backend](store, rank, world_size, timeout, device, **kwargs)


def current_process_group() -> ProcessGroup | None:
    """This thread's current group (set by :func:`process_group`); None outside one."""
    return getattr(_current, "pg", None)


@contextmanager
def process_group(pg: ProcessGroup) -> Generator[None, None, None]:
    """Make ``pg`` this thread's current group inside the ``with`` block (nests; the previous
    one is restored on exit, also after an exception)."""
    previous = current_process_group()
    _current.pg = pg
    try:
        yield
    finally:
        _current.pg = previous
