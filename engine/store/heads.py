"""The interpreted heads of a store as one table: label, labeller and top TextSpan texts per head.

What `python -m engine heads` lists (and what a notebook wants): one row per labelled head,
ordered by layer and head, with the texts best first and the share of variance each removed.
"""

from __future__ import annotations

import pandas as pd

from engine.core.layers import head_name
from engine.store.reader import StoreReader

HEAD_COLUMNS = ["name", "layer", "head", "label", "labeller", "texts", "variance_removed"]


def head_table(r: StoreReader) -> pd.DataFrame:
    """[head] rows: name (`L{l}H{h}`), layer, head, label, labeller, texts (list of
    {text, category, variance_removed}, best first) and variance_removed (their sum).
    Empty (with these columns) before `interpret`."""
    lab = r.query("SELECT layer, head, label, labeller FROM head_labels ORDER BY layer, head")
    ts = r.query(
        "SELECT layer, head, rank, text, category, variance_removed FROM textspan "
        "ORDER BY layer, head, rank"
    )
    texts: dict[tuple[int, int], list[dict]] = {}
    for row in ts.itertuples(index=False):
        texts.setdefault((int(row.layer), int(row.head)), []).append(
            {
                "text": str(row.text),
                "category": str(row.category),
                "variance_removed": float(row.variance_removed),
            }  # fmt: skip
        )
    rows = []
    for row in lab.itertuples(index=False):
        key = (int(row.layer), int(row.head))
        t = texts.get(key, [])
        rows.append(
            {
                "name": head_name(*key),
                "layer": key[0],
                "head": key[1],
                "label": str(row.label),
                "labeller": str(row.labeller),
                "texts": t,
                "variance_removed": round(sum(x["variance_removed"] for x in t), 6),
            }  # fmt: skip
        )
    return pd.DataFrame(rows, columns=HEAD_COLUMNS)
