"""The key-value table behind every store: one dict, torch's operation semantics, no waiting.

HashStore guards it with a condition variable, the TCPStore server drives it from its event
loop, and FileStore replays its log into it. Keys under ``INTERNAL_PREFIX`` are bookkeeping
(worker counts, reference counts) and are hidden from ``num_keys``/``list_keys``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

INTERNAL_PREFIX = "\x00pyc10d/"


def is_internal(key: str) -> bool:
    """True for the store's own bookkeeping keys."""
    return key.startswith(INTERNAL_PREFIX)


def parse_counter(key: str, raw: bytes) -> int:
    """Read the integer a counter key holds; ValueError naming the key if it is not one."""
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"add: the value of key {key!r} is not an integer: {raw[:64]!r}") from None


class KeyValueTable:
    """A dict of bytes values plus FIFO queues, implementing the store operations atomically
    with respect to the caller's own lock (the table has none)."""

    __slots__ = ("data", "num_user_keys", "queues")

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.queues: dict[str, deque[bytes]] = {}
        self.num_user_keys = 0

    def set(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``."""
        data = self.data
        if key not in data and not key.startswith(INTERNAL_PREFIX):
            self.num_user_keys += 1
        data[key] = value

    def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None if unset."""
        return self.data.get(key)

    def add(self, key: str, amount: int, low: int | None = None, high: int | None = None) -> int:
        """Add ``amount`` to the counter at ``key`` (0 if unset); return the new value.

        With bounds, a total outside ``[low, high]`` raises ValueError and leaves the key as is.
        """
        data = self.data
        raw = data.get(key)
        if raw is None:
            total = amount
        else:
            try:
                total = amount + int(raw)
            except ValueError:
                total = amount + parse_counter(key, raw)  # raises, naming the key
        if low is not None and not low <= total <= high:  # type: ignore[operator]
            raise ValueError(f"add: the value of key {key!r} would overflow to {total}")
        if raw is None and not key.startswith(INTERNAL_PREFIX):
            self.num_user_keys += 1
        data[key] = b"%d" % total
        return total

    def compare_set(self, key: str, expected: bytes, desired: bytes) -> bytes:
        """torch's compareSet: set when the key holds ``expected`` (or is unset and ``expected``
        is empty); return the stored value, or ``expected`` when the key stays unset."""
        current = self.data.get(key)
        if (current is None and not expected) or (current is not None and current == expected):
            self.set(key, desired)
            return desired
        return expected if current is None else current

    def append(self, key: str, value: bytes) -> None:
        """Append ``value`` to the bytes at ``key``, setting it if unset."""
        self.set(key, self.data.get(key, b"") + value)

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        if key not in self.data:
            return False
        del self.data[key]
        if not is_internal(key):
            self.num_user_keys -= 1
        return True

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys in ``keys`` that are not set."""
        return [k for k in keys if k not in self.data]

    def list_keys(self) -> list[str]:
        """Every user key."""
        return [k for k in self.data if not is_internal(k)]

    def queue_push(self, key: str, value: bytes) -> None:
        """Append ``value`` to the queue ``key``."""
        self.queues.setdefault(key, deque()).append(value)

    def queue_pop(self, key: str) -> bytes | None:
        """Pop the front of queue ``key``, or None if it is empty."""
        queue = self.queues.get(key)
        if not queue:
            return None
        value = queue.popleft()
        if not queue:
            del self.queues[key]
        return value

    def queue_len(self, key: str) -> int:
        """Items waiting in queue ``key``."""
        queue = self.queues.get(key)
        return len(queue) if queue else 0
