"""The store's tables, as pages show them: whole tables, head labels, one head's TextSpan texts
(read through the session's reader; no SQL here)."""

from __future__ import annotations

import pandas as pd

from engine.session import StoreSession
from engine.store import schema


def table(store: StoreSession, name: str) -> pd.DataFrame:
    """A DuckDB table of the store as a DataFrame (every schema table exists; may be empty)."""
    if name not in schema.TABLES:
        raise KeyError(f"{name} is not a store table")
    return store.reader.table(name)


def interpreted(store: StoreSession) -> bool:
    return bool(store.reader.interpreted)


def head_labels(store: StoreSession) -> dict[tuple[int, int], str]:
    """(layer, head) -> label, from the store's interpretation (empty if not run)."""
    return store.head_labels()


def textspan_texts(store: StoreSession, layer: int, head: int) -> pd.DataFrame:
    """TextSpan texts of one head, best first: columns rank, text, variance_removed."""
    return store.reader.textspan(layer, head)[["rank", "text", "variance_removed"]]
