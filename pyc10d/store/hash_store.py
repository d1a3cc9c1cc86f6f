"""``HashStore``: an in-process store shared by the threads of one process (torch's HashStore)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..core.errors import QueueEmptyError
from ..core.timeouts import Deadline, TimeoutLike
from .base import Store, ValueLike, check_key, check_keys, timeout_error, to_bytes
from .table import KeyValueTable


class HashStore(Store):
    """A thread-safe in-memory store; blocking calls wait on a condition variable."""

    def __init__(self) -> None:
        super().__init__()
        self._table = KeyValueTable()
        self._changed = threading.Condition()

    def _wait_until(self, ready, keys: list[str], seconds: float) -> None:
        """Wait (holding the condition) until ``ready()``, or raise the timeout error."""
        deadline = Deadline(seconds)
        while not ready():
            left = deadline.remaining()
            if left <= 0:
                raise timeout_error("HashStore", keys, self._table.missing(keys) or keys, seconds)
            self._changed.wait(None if left == float("inf") else left)

    def set(self, key: str, value: ValueLike) -> None:
        """Set ``key`` to ``value``."""
        key, value = check_key(key), to_bytes(value)
        with self._changed:
            self._table.set(key, value)
            self._changed.notify_all()

    def get(self, key: str) -> bytes:
        """Return ``key``'s value, waiting up to the store timeout."""
        check_key(key)
        with self._changed:
            self._wait_until(lambda: key in self._table.data, [key], self._wait_seconds(None))
            return self._table.data[key]

    def add(self, key: str, amount: int) -> int:
        """Atomically add ``amount`` to the counter at ``key``."""
        check_key(key)
        with self._changed:
            total = self._table.add(key, int(amount))
            self._changed.notify_all()
            return total

    def compare_set(self, key: str, expected_value: ValueLike, desired_value: ValueLike) -> bytes:
        """torch's compare-and-set; see :meth:`Store.compare_set`."""
        check_key(key)
        expected, desired = to_bytes(expected_value), to_bytes(desired_value)
        with self._changed:
            result = self._table.compare_set(key, expected, desired)
            self._changed.notify_all()
            return result

    def append(self, key: str, value: ValueLike) -> None:
        """Append ``value`` to ``key``."""
        key, value = check_key(key), to_bytes(value)
        with self._changed:
            self._table.append(key, value)
            self._changed.notify_all()

    def wait(self, keys: Sequence[str], timeout: TimeoutLike | None = None) -> None:
        """Block until all ``keys`` exist."""
        keys = check_keys(keys)
        seconds = self._wait_seconds(timeout)
        with self._changed:
            self._wait_until(lambda: not self._table.missing(keys), keys, seconds)

    def multi_get(self, keys: Sequence[str]) -> list[bytes]:
        """Values of ``keys``, waiting for all of them."""
        keys = check_keys(keys)
        with self._changed:
            self._wait_until(lambda: not self._table.missing(keys), keys, self._wait_seconds(None))
            return [self._table.data[k] for k in keys]

    def check(self, keys: Sequence[str]) -> bool:
        """True if all ``keys`` exist."""
        keys = check_keys(keys)
        with self._changed:
            return not self._table.missing(keys)

    def delete_key(self, key: str) -> bool:
        """Delete ``key``."""
        check_key(key)
        with self._changed:
            return self._table.delete(key)

    def num_keys(self) -> int:
        """Number of keys set."""
        with self._changed:
            return self._table.num_user_keys

    def list_keys(self) -> list[str]:
        """All keys set."""
        with self._changed:
            return self._table.list_keys()

    def queue_push(self, key: str, value: ValueLike) -> None:
        """Push onto queue ``key``."""
        key, value = check_key(key), to_bytes(value)
        with self._changed:
            self._table.queue_push(key, value)
            self._changed.notify_all()

    def queue_pop(self, key: str, block: bool = True) -> bytes:
        """Pop from queue ``key``; QueueEmptyError if empty and not ``block``."""
        check_key(key)
        with self._changed:
            if block:
                self._wait_until(
                    lambda: self._table.queue_len(key) > 0, [key], self._wait_seconds(None)
                )
            value = self._table.queue_pop(key)
            if value is None:
                raise QueueEmptyError(f"queue {key!r} is empty")
            return value

    def queue_len(self, key: str) -> int:
        """Length of queue ``key``."""
        check_key(key)
        with self._changed:
            return self._table.queue_len(key)

    def clone(self) -> HashStore:
        """HashStore is already thread-safe: a clone is the same store."""
        return self
