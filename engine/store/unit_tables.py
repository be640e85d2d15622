"""The unit tables (`schema.UNIT_TABLES`): written by interpret, read by the unit pages.

Stores built before these tables existed lack them: the writer creates them on the version it
writes, and the readers return empty frames (the page then says to run `interpret`).
"""

from __future__ import annotations

import pandas as pd

from engine.store import schema


def replace_unit_tables(writer, frames: dict[str, pd.DataFrame]) -> None:
    """Replace the unit tables with `frames` (table -> rows, columns by name) through a
    `StoreWriter` (`mutate_store`). The tables are recreated from the schema (they hold nothing
    but the latest interpretation's rows), so a store written by an older schema gets today's."""
    for table in schema.UNIT_TABLES:
        writer.recreate(table)
        writer.append(table, frames.get(table))


def _has(reader, table: str) -> bool:
    got = reader.query(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ?", [table]
    )
    return bool(got["n"].iloc[0])


def unit_summary(reader) -> pd.DataFrame:
    """Every unit's summary row (schema `unit_summary`), ordered by layer, head; empty if none."""
    if not _has(reader, "unit_summary"):
        return pd.DataFrame(columns=_columns("unit_summary"))
    return reader.query("SELECT * FROM unit_summary ORDER BY layer, head")


def unit_examples(reader, layer: int, head: int) -> pd.DataFrame:
    """One unit's top and bottom images (schema `unit_examples`), by side then rank."""
    if not _has(reader, "unit_examples"):
        return pd.DataFrame(columns=_columns("unit_examples"))
    return reader.query(
        "SELECT * FROM unit_examples WHERE layer = ? AND head = ? ORDER BY side DESC, rank",
        [int(layer), int(head)],
    )


def unit_histograms(reader, layer: int, head: int) -> pd.DataFrame:
    """One unit's histograms (schema `unit_histograms`), by quantity then bin."""
    if not _has(reader, "unit_histograms"):
        return pd.DataFrame(columns=_columns("unit_histograms"))
    return reader.query(
        "SELECT * FROM unit_histograms WHERE layer = ? AND head = ? ORDER BY quantity, bin",
        [int(layer), int(head)],
    )


def _columns(table: str) -> list[str]:
    lines = schema.TABLES[table].strip().splitlines()[1:-1]
    return [ln.strip().split()[0] for ln in lines if ln.strip() and not ln.strip().startswith("--")]


def replace_unit_visualisations(writer, df: pd.DataFrame) -> None:
    """Replace the visualisations of the units in `df` (others are kept) through a
    `StoreWriter`; the table is created first on stores that predate it."""
    writer.ensure("unit_visualisations")
    writer.delete("unit_visualisations", unit=df["unit"].tolist())
    writer.append("unit_visualisations", df)


def unit_visualisations(reader, layer: int | None = None, head: int | None = None) -> pd.DataFrame:
    """Stored visualisations (schema `unit_visualisations`): one head's, or all."""
    if not _has(reader, "unit_visualisations"):
        return pd.DataFrame(columns=_columns("unit_visualisations"))
    if layer is None:
        return reader.query("SELECT * FROM unit_visualisations ORDER BY layer, head")
    return reader.query(
        "SELECT * FROM unit_visualisations WHERE layer = ? AND head = ?", [int(layer), int(head)]
    )


def image_sizes(reader, image_ids) -> pd.DataFrame:
    """Width and height of some stored images (index image_id), for drawing maps on thumbnails."""
    ids = [int(i) for i in image_ids]
    if not ids:
        return pd.DataFrame(columns=["width", "height"])
    return reader.query(
        "SELECT image_id, width, height FROM images WHERE image_id IN (SELECT UNNEST(?))", [ids]
    ).set_index("image_id")


def head_label(reader, layer: int, head: int) -> tuple[str | None, str | None]:
    """(label, labeller) of one head from the interpretation, or (None, None)."""
    got = reader.query(
        "SELECT label, labeller FROM head_labels WHERE layer = ? AND head = ? LIMIT 1",
        [int(layer), int(head)],
    )
    return (str(got["label"].iloc[0]), str(got["labeller"].iloc[0])) if len(got) else (None, None)
