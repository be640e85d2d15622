"""Queries on a store's tables: whole tables, head labels, one head's TextSpan texts."""

from __future__ import annotations

import pandas as pd

from engine.store import schema


def table(store, name: str) -> pd.DataFrame:
    """A DuckDB table of the store as a DataFrame (every schema table exists; may be empty)."""
    if name not in schema.TABLES:
        raise KeyError(f"{name} is not a store table")
    return store.table(name)


def interpreted(store) -> bool:
    return bool(store.interpreted)


def head_labels(store) -> dict[tuple[int, int], str]:
    """(layer, head) -> label, from the store's interpretation (empty if not run)."""
    return store.head_labels()


def textspan_texts(store, layer: int, head: int) -> pd.DataFrame:
    """TextSpan texts of one head, best first: columns rank, text, variance_removed."""
    return store.textspan(layer, head)[["rank", "text", "variance_removed"]]
