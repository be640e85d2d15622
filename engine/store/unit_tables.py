"""The unit tables (`schema.UNIT_TABLES`): written by interpret, read by the unit pages.

Units are heads (`L7H3`, written by `interpret`) and MLP neurons (`L6N12`, written by `interpret
--neurons`): every row carries `kind` (head | neuron) and `unit` (its name); a head keeps its
`layer`, `head` columns, a neuron has `layer`, `neuron` (head NULL). Rows written before `kind`
existed are heads (NULL kind), so stores interpreted earlier read as before. Each writer replaces
only its own kind's rows (`StoreWriter.replace_units`, which first adds any column an older store
lacks).

Stores built before these tables existed lack them: the writers create them on the version they
write, and the readers return empty frames (the page then says to run `interpret`).
"""

from __future__ import annotations

import pandas as pd

from engine.core.layers import head_name, parse_unit_name, unit_name
from engine.store import schema


def replace_unit_tables(writer, frames: dict[str, pd.DataFrame]) -> None:
    """Replace the heads' rows of the unit tables with `frames` (table -> rows, columns by name)
    through a `StoreWriter` (`mutate_store`); neurons' rows are kept."""
    for table in schema.UNIT_TABLES:
        df = frames.get(table)
        if df is not None:
            df = df.assign(kind="head")
            if "unit" not in df.columns:
                df["unit"] = [head_name(l, h) for l, h in zip(df.layer, df["head"], strict=True)]
        writer.replace_units(table, df, "head")


def replace_neuron_units(writer, frames: dict[str, pd.DataFrame], layers: list[int]) -> None:
    """Replace the neuron rows of `layers` in the unit tables with `frames` (`interpret
    --neurons`, `engine.pipeline.neuron_units`); heads' rows and other layers' are kept."""
    for table in schema.UNIT_TABLES:
        df = frames.get(table)
        writer.replace_units(table, None if df is None else df.assign(kind="neuron"), "neuron",
                             layers)  # fmt: skip


def _has(reader, table: str) -> bool:
    got = reader.query(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ?", [table]
    )
    return bool(got["n"].iloc[0])


def _present(reader, table: str) -> list[str]:
    """The columns `table` has in this store (an older store may lack the newest)."""
    return list(reader.query(f"SELECT * FROM {table} LIMIT 0").columns)


def _kind_sql(cols: list[str], kind: str) -> str:
    """SQL condition selecting one kind's rows (rows without a kind are heads)."""
    if "kind" not in cols:
        return "TRUE" if kind == "head" else "FALSE"
    return "(kind IS NULL OR kind = 'head')" if kind == "head" else "kind = 'neuron'"


def _filled(df: pd.DataFrame, table: str, kind: str) -> pd.DataFrame:
    """Rows with today's columns: missing ones added (NULL), `kind` and `unit` filled in."""
    for c in _columns(table):
        if c not in df.columns:
            df[c] = None
    df["kind"] = df["kind"].fillna(kind) if len(df) else df["kind"]
    if "unit" in df.columns and len(df) and kind == "head":
        missing = df["unit"].isna()
        df.loc[missing, "unit"] = [
            head_name(l, h) for l, h in zip(df.layer[missing], df["head"][missing], strict=True)
        ]
    return df


def unit_summary(reader, kind: str = "head") -> pd.DataFrame:
    """Summary rows (schema `unit_summary`) of one kind's units (head | neuron), ordered by layer
    then index, or of both (`kind="all"`: heads first); empty if none."""
    if not _has(reader, "unit_summary"):
        return pd.DataFrame(columns=_columns("unit_summary"))
    if kind == "all":
        parts = [unit_summary(reader, k) for k in schema.UNIT_KINDS]
        full = [p for p in parts if len(p)]
        return pd.concat(full, ignore_index=True) if full else parts[0]
    cols = _present(reader, "unit_summary")
    if kind == "neuron" and "neuron" not in cols:  # a store written before neurons were units
        return pd.DataFrame(columns=_columns("unit_summary"))
    order = "layer, head" if kind == "head" else "layer, neuron"
    got = reader.query(f"SELECT * FROM unit_summary WHERE {_kind_sql(cols, kind)} ORDER BY {order}")
    return _filled(got, "unit_summary", kind)


def _unit_rows(reader, table: str, unit: str, order: str) -> pd.DataFrame:
    parsed = parse_unit_name(unit)
    if parsed is None or not _has(reader, table):
        return pd.DataFrame(columns=_columns(table))
    kind, layer, index = parsed
    cols = _present(reader, table)
    if kind == "neuron" and "neuron" not in cols:
        return pd.DataFrame(columns=_columns(table))
    col = "head" if kind == "head" else "neuron"
    got = reader.query(
        f"SELECT * FROM {table} WHERE {_kind_sql(cols, kind)} AND layer = ? AND {col} = ? "
        f"ORDER BY {order}",
        [int(layer), int(index)],
    )
    return _filled(got, table, kind)


def unit_examples(reader, layer: int, head: int) -> pd.DataFrame:
    """One head's top and bottom images (schema `unit_examples`), by side then rank."""
    return unit_examples_of(reader, head_name(layer, head))


def unit_examples_of(reader, unit: str) -> pd.DataFrame:
    """One unit's (`L7H3` or `L6N12`) top and bottom images, by side (top first) then rank."""
    return _unit_rows(reader, "unit_examples", unit, "side DESC, rank")


def unit_histograms(reader, layer: int, head: int) -> pd.DataFrame:
    """One head's histograms (schema `unit_histograms`), by quantity then bin."""
    return unit_histograms_of(reader, head_name(layer, head))


def unit_histograms_of(reader, unit: str) -> pd.DataFrame:
    """One unit's (`L7H3` or `L6N12`) histograms, by quantity then bin."""
    return _unit_rows(reader, "unit_histograms", unit, "quantity, bin")


def _columns(table: str) -> list[str]:
    return [name for name, _ in schema.table_columns(table)]


def replace_unit_visualisations(writer, df: pd.DataFrame) -> None:
    """Replace the visualisations of the units in `df` (others are kept) through a
    `StoreWriter`; the table is created (or given its newest columns) on older stores."""
    writer.upgrade("unit_visualisations")
    writer.delete("unit_visualisations", unit=df["unit"].tolist())
    writer.append("unit_visualisations", df)


def unit_visualisations(reader, layer: int | None = None, head: int | None = None) -> pd.DataFrame:
    """Stored visualisations (schema `unit_visualisations`): one head's, or every unit's (heads
    and neurons)."""
    if not _has(reader, "unit_visualisations"):
        return pd.DataFrame(columns=_columns("unit_visualisations"))
    if layer is None:
        return reader.query("SELECT * FROM unit_visualisations ORDER BY unit")
    return unit_visualisation_of(reader, head_name(layer, head))


def unit_visualisation_of(reader, unit: str) -> pd.DataFrame:
    """One unit's (`L7H3` or `L6N12`) stored visualisation (0 or 1 row)."""
    if not _has(reader, "unit_visualisations") or parse_unit_name(unit) is None:
        return pd.DataFrame(columns=_columns("unit_visualisations"))
    return reader.query(
        "SELECT * FROM unit_visualisations WHERE unit = ?", [unit_name(*parse_unit_name(unit))]
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
