"""A thread-safe LRU cache bounded by total weight: the asset manager's caches of
decoded snapshots, manifests and transaction logs."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["LRU"]

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A thread-safe LRU cache bounded by total weight (entries weigh ``weigh(value)``)."""

    def __init__(self, capacity: int, weigh: Callable[[V], int] = lambda _: 1) -> None:
        self.capacity = capacity
        self._weigh = weigh
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            self._data.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V) -> None:
        weight = max(1, self._weigh(value))
        if weight > self.capacity:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._total -= old[1]
            self._data[key] = (value, weight)
            self._total += weight
            while self._total > self.capacity:
                _, (_, dropped) = self._data.popitem(last=False)
                self._total -= dropped

    def __len__(self) -> int:
        return len(self._data)
