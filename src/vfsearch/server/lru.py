"""A small thread-safe LRU mapping, bounded by item count and total size in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["LRU"]


class LRU:
    """Least-recently-used mapping bounded by item count and (optionally) total size in bytes."""

    def __init__(self, max_items: int, max_bytes: int | None = None,
                 sizeof: Callable[[Any], int] | None = None):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.sizeof = sizeof or (lambda v: 0)
        self._d: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._d:
                return default
            self._d.move_to_end(key)
            return self._d[key][0]

    def put(self, key, value) -> None:
        size = int(self.sizeof(value))
        with self._lock:
            if key in self._d:
                self._bytes -= self._d.pop(key)[1]
            self._d[key] = (value, size)
            self._bytes += size
            while self._d and (len(self._d) > self.max_items
                               or (self.max_bytes is not None and self._bytes > self.max_bytes
                                   and len(self._d) > 1)):
                _, (_, s) = self._d.popitem(last=False)
                self._bytes -= s

    def __contains__(self, key) -> bool:
        with self._lock:
            return key in self._d

    def __len__(self) -> int:
        with self._lock:
            return len(self._d)

    @property
    def nbytes(self) -> int:
        return self._bytes
