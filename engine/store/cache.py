"""A least-recently-used cache bounded by bytes, not entries (per-head arrays of any store size).

Used by `StoreReader` (float32 coordinates per head), by `StoreSession` (per-head
contributions, whole-store results, query decompositions: one budget, possibly shared by a
server's sessions) and by the dashboard (unit rows per head). `nbytes` sizes what is kept.
The budget is a setting: `CLIP_INTERPRET_CACHE_MB` (default `DEFAULT_CACHE_MB`, sized for a
laptop). An entry larger than the whole budget is returned but not kept.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

CACHE_ENV = "CLIP_INTERPRET_CACHE_MB"
DEFAULT_CACHE_MB = 768  # a laptop: the model, the imports and this stay under 3 GB


def default_budget() -> int:
    """The cache budget in bytes: $CLIP_INTERPRET_CACHE_MB or DEFAULT_CACHE_MB."""
    raw = os.environ.get(CACHE_ENV, "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_CACHE_MB
    except ValueError:
        mb = DEFAULT_CACHE_MB
    return max(0, int(mb * 2**20))


_DEPTH = 6  # how deep `nbytes` looks into containers and objects


def nbytes(value: Any) -> int:
    """Bytes held by a cached value: `.nbytes` (numpy, HeadContributions), torch's numel, a
    DataFrame's / Series' deep memory usage, str / bytes; tuples, lists, sets, dicts (values),
    dataclasses and plain objects summed over what they hold (each object counted once, up to
    `_DEPTH` levels deep). Anything else: 0. Memory maps count their mapped size."""
    return _nbytes(value, set(), _DEPTH)


def _nbytes(value: Any, seen: set[int], depth: int) -> int:
    if value is None or isinstance(value, bool | int | float | complex | type):
        return 0
    if id(value) in seen or depth < 0:
        return 0
    seen.add(id(value))
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    usage = getattr(value, "memory_usage", None)
    if callable(usage) and hasattr(value, "dtypes"):
        return int(np.asarray(usage(deep=True)).sum())  # DataFrame (per column) or Series
    n = getattr(value, "nbytes", None)  # ndarray, torch tensor, HeadContributions
    if isinstance(n, int | np.integer):
        return int(n)
    if hasattr(value, "numel") and hasattr(value, "element_size"):
        return int(value.numel() * value.element_size())
    if isinstance(value, dict):
        return sum(_nbytes(v, seen, depth - 1) for v in value.values())
    if isinstance(value, tuple | list | set | frozenset):
        return sum(_nbytes(v, seen, depth - 1) for v in value)
    if dataclasses.is_dataclass(value):
        fields = (getattr(value, f.name, None) for f in dataclasses.fields(value))
        return sum(_nbytes(v, seen, depth - 1) for v in fields)
    held = getattr(value, "__dict__", None)
    if isinstance(held, dict) and not callable(value):
        return sum(_nbytes(v, seen, depth - 1) for v in held.values())
    return 0


class ByteBudgetCache:
    """LRU over keys; evicts least recently used entries until the total fits `budget` bytes."""

    def __init__(self, budget: int | None = None):
        self.budget = default_budget() if budget is None else max(0, int(budget))
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def keys(self) -> list[Hashable]:
        """The kept keys, least recently used first (a copy)."""
        with self._lock:
            return list(self._items)

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached value of `key`, computing (outside the lock) and keeping it on a miss."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
        value = compute()
        self.put(key, value)
        return value

    def lookup(self, key: Hashable, default: Any = None) -> Any:
        """The cached value of `key` (refreshed, counted as a hit), else `default` (a miss)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key][0]
            self.misses += 1
            return default

    def put(self, key: Hashable, value: Any, size: int | None = None) -> None:
        """Keep `value` (of `size` bytes, default `nbytes(value)`), evicting the least recently
        used entries until the total fits the budget; one larger than the budget is not kept."""
        size = nbytes(value) if size is None else int(size)
        with self._lock:
            if key in self._items:
                self.used -= self._items.pop(key)[1]
            if size > self.budget:
                return  # larger than the whole budget: returned to the caller, never kept
            self._items[key] = (value, size)
            self.used += size
            while self.used > self.budget:
                _, (_, s) = self._items.popitem(last=False)
                self.used -= s
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0

    def drop(self, which: Callable[[Hashable], bool]) -> None:
        """Forget the entries whose key `which` selects (e.g. one store version's)."""
        with self._lock:
            for key in [k for k in self._items if which(k)]:
                self.used -= self._items.pop(key)[1]
