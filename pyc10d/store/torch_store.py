"""``TorchStore``: a ``torch.distributed.Store`` (TCPStore, FileStore, PrefixStore...) seen as a
pyc10d :class:`Store`.

Two users: the torch backend, whose creator receives torch's group store (pyc10d's transports
rendezvous through it instead of opening a second one), and ``env://`` under torchrun, whose agent
hosts a torch TCPStore that every rank joins as a client. Each call is passed straight through;
torch's store errors become pyc10d's :class:`DistStoreError`, so pyc10d's timeout handling applies
unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as torch_dist

from ..core.errors import DistStoreError
from ..core.timeouts import TimeoutLike, to_timedelta
from .base import Store, ValueLike

T = TypeVar("T")


def _store_errors(method: Callable[..., T]) -> Callable[..., T]:
    """Re-raise a torch store's failure (a timeout or a lost store) as pyc10d's DistStoreError.

    torch's TCPStore raises ``DistStoreError`` ("wait timeout after 50ms"), its FileStore a plain
    RuntimeError ("Wait timeout"): both mean the same to pyc10d.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except DistStoreError:
            raise
        except RuntimeError as exc:
            raise DistStoreError(str(exc)) from exc

    return wrapper


class TorchStore(Store):
    """A pyc10d :class:`Store` whose every call goes to a ``torch.distributed.Store``."""

    def __init__(self, store: torch_dist.Store) -> None:
        self.torch_store = store

    @property
    def timeout(self) -> timedelta:
        """The torch store's timeout."""
        return self.torch_store.timeout

    def set_timeout(self, timeout: TimeoutLike) -> None:
        """Set the torch store's timeout."""
        self.torch_store.set_timeout(to_timedelta(timeout))

    def set(self, key: str, value: ValueLike) -> None:
        """torch ``Store.set``."""
        self.torch_store.set(key, value)

    @_store_errors
    def get(self, key: str) -> bytes:
        """torch ``Store.get`` (waits up to the store timeout)."""
        return self.torch_store.get(key)

    def add(self, key: str, amount: int) -> int:
        """torch ``Store.add``."""
        return self.torch_store.add(key, amount)

    def compare_set(self, key: str, expected_value: ValueLike, desired_value: ValueLike) -> bytes:
        """torch ``Store.compare_set``."""
        return self.torch_store.compare_set(key, expected_value, desired_value)

    @_store_errors
    def wait(self, keys: Sequence[str], timeout: TimeoutLike | None = None) -> None:
        """torch ``Store.wait``, with the store's timeout when ``timeout`` is None."""
        if timeout is None:
            self.torch_store.wait(list(keys))
        else:
            self.torch_store.wait(list(keys), to_timedelta(timeout))

    def check(self, keys: Sequence[str]) -> bool:
        """torch ``Store.check``."""
        return self.torch_store.check(list(keys))

    def delete_key(self, key: str) -> bool:
        """torch ``Store.delete_key``."""
        return self.torch_store.delete_key(key)

    def num_keys(self) -> int:
        """torch ``Store.num_keys``."""
        return self.torch_store.num_keys()

    def list_keys(self) -> list[str]:
        """torch ``Store.list_keys``."""
        return self.torch_store.list_keys()

    @_store_errors
    def multi_get(self, keys: Sequence[str]) -> list[bytes]:
        """torch ``Store.multi_get``."""
        return self.torch_store.multi_get(list(keys))

    def multi_set(self, keys: Sequence[str], values: Sequence[ValueLike]) -> None:
        """torch ``Store.multi_set``."""
        self.torch_store.multi_set(list(keys), list(values))
