"""``PrefixStore``: a namespace inside another store (torch.distributed.PrefixStore)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from ..core.timeouts import TimeoutLike
from .base import Store, ValueLike, check_key, check_keys


class PrefixStore(Store):
    """Prepends ``prefix + "/"`` to every key before passing the call to ``store``."""

    def __init__(self, prefix: str, store: Store) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"PrefixStore prefix must be a str, got {type(prefix).__name__}")
        if not isinstance(store, Store):
            raise TypeError(f"PrefixStore needs a pyc10d Store, got {type(store).__name__}")
        self._prefix = prefix
        self._store = store

    @property
    def underlying_store(self) -> Store:
        """The store this one wraps (torch's ``PrefixStore.underlying_store``)."""
        return self._store

    @property
    def prefix(self) -> str:
        """The prefix added to every key (without the trailing ``/``)."""
        return self._prefix

    @property
    def timeout(self) -> timedelta:
        """The underlying store's timeout."""
        return self._store.timeout

    def set_timeout(self, timeout: TimeoutLike) -> None:
        """Set the underlying store's timeout."""
        self._store.set_timeout(timeout)

    def _key(self, key: str) -> str:
        return f"{self._prefix}/{check_key(key)}"

    def _keys(self, keys: Sequence[str]) -> list[str]:
        return [f"{self._prefix}/{k}" for k in check_keys(keys)]

    def set(self, key: str, value: ValueLike) -> None:
        """Set the prefixed key."""
        self._store.set(self._key(key), value)

    def get(self, key: str) -> bytes:
        """Get the prefixed key, waiting like the underlying store."""
        return self._store.get(self._key(key))

    def add(self, key: str, amount: int) -> int:
        """Add to the prefixed counter."""
        return self._store.add(self._key(key), amount)

    def compare_set(self, key: str, expected_value: ValueLike, desired_value: ValueLike) -> bytes:
        """Compare-and-set the prefixed key."""
        return self._store.compare_set(self._key(key), expected_value, desired_value)

    def wait(self, keys: Sequence[str], timeout: TimeoutLike | None = None) -> None:
        """Wait for the prefixed keys."""
        self._store.wait(self._keys(keys), timeout)

    def check(self, keys: Sequence[str]) -> bool:
        """Check the prefixed keys."""
        return self._store.check(self._keys(keys))

    def delete_key(self, key: str) -> bool:
        """Delete the prefixed key."""
        return self._store.delete_key(self._key(key))

    def num_keys(self) -> int:
        """Keys in the whole underlying store, as torch's PrefixStore reports."""
        return self._store.num_keys()

    def list_keys(self) -> list[str]:
        """Keys under this prefix, with the prefix removed."""
        head = self._prefix + "/"
        return [k[len(head) :] for k in self._store.list_keys() if k.startswith(head)]

    def multi_get(self, keys: Sequence[str]) -> list[bytes]:
        """Values of the prefixed keys."""
        return self._store.multi_get(self._keys(keys))

    def multi_set(self, keys: Sequence[str], values: Sequence[ValueLike]) -> None:
        """Set several prefixed keys."""
        self._store.multi_set(self._keys(keys), values)

    def append(self, key: str, value: ValueLike) -> None:
        """Append to the prefixed key."""
        self._store.append(self._key(key), value)

    def queue_push(self, key: str, value: ValueLike) -> None:
        """Push onto the prefixed queue."""
        self._store.queue_push(self._key(key), value)

    def queue_pop(self, key: str, block: bool = True) -> bytes:
        """Pop from the prefixed queue."""
        return self._store.queue_pop(self._key(key), block)

    def queue_len(self, key: str) -> int:
        """Length of the prefixed queue."""
        return self._store.queue_len(self._key(key))

    def has_extended_api(self) -> bool:
        """Whether the underlying store has the extended API."""
        return self._store.has_extended_api()

    def clone(self) -> PrefixStore:
        """The same prefix over a clone of the underlying store."""
        return PrefixStore(self._prefix, self._store.clone())
