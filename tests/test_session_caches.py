"""The session's caches: what `nbytes` counts (DataFrames, containers, dataclasses, objects),
whole-store results kept under the byte budget (no eviction among many keys that fit, small
metadata always kept, an entry over the budget returned but not kept) and `drop_caches`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from engine.session import StoreSession
from engine.store.cache import ByteBudgetCache, nbytes

pytestmark = pytest.mark.unit


def test_nbytes_counts_arrays_tensors_and_frames_deeply():
    a = np.zeros((10, 7), np.float32)
    assert nbytes(a) == 280
    assert nbytes(torch.zeros(3, 5, dtype=torch.float64)) == 120
    df = pd.DataFrame(
        {"x": np.arange(100, dtype=np.int64), "t": pd.Series(["word " * 20] * 100, dtype=object)}
    )
    deep = int(df.memory_usage(deep=True).sum())
    assert nbytes(df) == deep > int(df.memory_usage(deep=False).sum())  # the strings count
    assert nbytes(df["x"]) == int(df["x"].memory_usage(deep=True))
    assert nbytes("abcd") == 4 and nbytes(b"xy") == 2 and nbytes(None) == 0 and nbytes(3.0) == 0


@dataclass
class _Held:
    arr: np.ndarray
    by_layer: dict
    name: str


class _Plain:  # like ComponentSet: arrays inside a plain object's attributes
    def __init__(self, parts):
        self._parts = parts
        self.me = self  # a cycle is counted once and ends


def test_nbytes_sums_containers_dataclasses_and_objects_counting_each_once():
    a, b = np.ones(100, np.float32), np.ones(50, np.float64)
    assert nbytes((a, b)) == 800 == nbytes([a, b]) == nbytes({"a": a, "b": b})
    held = _Held(a, {1: b, 2: torch.ones(10)}, "L1")
    assert nbytes(held) == 400 + 400 + 40 + 2
    assert nbytes((a, a, [a])) == 400  # one array held three times: counted once
    assert nbytes(_Plain([a, {"k": b}])) == 800
    assert nbytes((held, _Plain([a]))) == 842  # `a` shared between the two


def _session(budget: int) -> StoreSession:
    """A session over no store (its caches only: they need just the version's path)."""
    reader = SimpleNamespace(version_path=Path("/nowhere/v1"), cache=ByteBudgetCache(0))
    return StoreSession(reader, cache_bytes=budget)


def _counting():
    calls: dict = {}

    def make(key, value):
        def compute():
            calls[key] = calls.get(key, 0) + 1
            return value

        return compute

    return calls, make


def test_many_whole_store_keys_that_fit_never_evict_each_other():
    s = _session(10 * 2**20)
    calls, make = _counting()
    keys = ["components", "pool_mlp_share", "neuron_stats", "neuron_words", "neuron_directions"]
    keys += [("tasks", src) for src in ("factors", "folders")]
    keys += [(kind, l) for kind in ("neuron_paths", "neuron_coords") for l in range(6)]
    assert len(keys) > 8  # more than the old LRU's 8 entries
    for _ in range(3):
        for i, k in enumerate(keys):
            v = s._once.get(k, make(k, np.full(50_000, i, np.float32)))  # 200 kB each
            assert v[0] == i
    assert calls == {k: 1 for k in keys}  # each computed once
    assert s._heads_cache.evictions == 0 and s._heads_cache.used == 200_000 * len(keys)


def test_small_results_stay_and_one_over_the_budget_is_returned_not_kept():
    s = _session(300_000)
    calls, make = _counting()
    big = np.zeros(100_000, np.float32)  # 400 kB: over the budget
    for _ in range(2):
        assert s._once.get("big", make("big", big)) is big
        s._once.get("share", make("share", {"mean": 0.1, "max": 0.3}))
        for i in range(5):  # 100 kB each: at most 3 fit
            s._once.get(("paths", i), make(("paths", i), np.zeros(25_000, np.float32)))
            assert s._heads_cache.used <= s._heads_cache.budget
    assert calls["big"] == 2  # never kept
    assert calls["share"] == 1  # small metadata: kept whatever the pressure
    assert all(calls[("paths", i)] == 2 for i in range(5))  # LRU within the budget
    assert s._heads_cache.evictions > 0 and len(s._once) == 1 + 3


def test_drop_caches_empties_every_session_cache():
    s = _session(10 * 2**20)
    calls, make = _counting()
    s._once.get("share", make("share", {"mean": 0.1}))
    s._once.get("components", make("components", np.zeros(40_000, np.float32)))
    s._queries.get("sha", make("q", np.zeros(1000, np.float32)))
    s._neuron_queries.get(("sha", 1), make("nq", {3: torch.zeros(10)}))
    s._maps.get(("sha", b""), make("m", np.zeros(4)))
    assert len(s._once) == 2 and len(s._queries) == 1 and len(s._neuron_queries) == 1
    other = s._heads_cache.get(("another version", 1, 0), lambda: np.zeros(10))
    s.drop_caches()
    assert len(s._once) == len(s._queries) == len(s._neuron_queries) == 0
    assert s._maps.peek(("sha", b"")) is None
    assert s._heads_cache.keys() == [("another version", 1, 0)]  # another version's: kept
    assert other is not None
    s._neuron_queries.get(("sha", 1), make("nq", None))
    assert calls["nq"] == 2  # recomputed after the drop
