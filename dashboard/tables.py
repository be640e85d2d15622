"""The store's tables, as pages show them: whether interpreted, one head's TextSpan texts
(read through the session's reader; no SQL here)."""

from __future__ import annotations

import pandas as pd

from engine.session import StoreSession


def interpreted(store: StoreSession) -> bool:
    return bool(store.reader.interpreted)


def textspan_texts(store: StoreSession, layer: int, head: int) -> pd.DataFrame:
    """TextSpan texts of one head, best first: columns rank, text, variance_removed."""
    return store.reader.textspan(layer, head)[["rank", "text", "variance_removed"]]
