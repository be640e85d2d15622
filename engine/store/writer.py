"""Writing a new store version: arrays and tables from the schema, per-chunk build records."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import zarr

from engine.store import schema
from engine.store.versions import BUILD_DIR, STAGING_PREFIX, versions_dir


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table of schema.TABLES (in a fresh DuckDB file)."""
    for sql in schema.TABLES.values():
        con.execute(sql)


def create_arrays(folder: Path, sizes: dict[str, int], attrs: dict | None = None) -> dict:
    """Create (overwrite) every Zarr array of the schema in `folder/contrib.zarr`.

    sizes: dimension sizes {image, layer, head, d_embed, y, x, rgb, image_chunk}.
    """
    group = zarr.open_group(str(folder / schema.STORE_ZARR), mode="w", zarr_format=3)
    group.attrs.update(attrs or {})
    arrays = {}
    for spec in schema.ARRAYS.values():
        arrays[spec.name] = group.create_array(
            spec.name,
            shape=spec.shape(sizes),
            dtype=spec.dtype,
            chunks=spec.chunk_shape(sizes),
            shards=spec.shard_shape(sizes),
            dimension_names=spec.dims,
            compressors=zarr.codecs.ZstdCodec(level=3) if spec.compress else None,
            fill_value=0,
            attributes={"description": spec.description},
        )
    return arrays


def open_arrays(folder: Path, mode: str = "r") -> dict:
    group = zarr.open_group(str(folder / schema.STORE_ZARR), mode=mode)
    return {name: group[name] for name in schema.ARRAYS}


def write_rows(arrays: dict, start: int, data: dict[str, np.ndarray]) -> None:
    """Write one image chunk: data[name] holds rows [start, start + n) of array `name`."""
    for name, value in data.items():
        arrays[name][start : start + len(value)] = value


def resize_images(arrays: dict, n_images: int) -> None:
    """Shrink/grow every array's image dimension to `n_images`."""
    for arr in arrays.values():
        arr.resize((n_images, *arr.shape[1:]))


def staging_dir(link: str | os.PathLike, key: str) -> Path:
    return versions_dir(Path(link)) / f"{STAGING_PREFIX}{key}"


def save_chunk_record(folder: Path, k: int, record: dict) -> None:
    """Mark image chunk k done (after its arrays are written): an atomically written JSON."""
    d = folder / BUILD_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".chunk-{k:06d}.{uuid.uuid4().hex[:6]}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, d / f"chunk-{k:06d}.json")


def iter_chunk_records(folder: Path) -> Iterator[dict]:
    """Records of the consecutive completed chunks 0, 1, ... of a build, read one at a time."""
    d = folder / BUILD_DIR
    k = 0
    while (p := d / f"chunk-{k:06d}.json").is_file():
        yield json.loads(p.read_text())
        k += 1


def load_chunk_records(folder: Path) -> list[dict]:
    return list(iter_chunk_records(folder))


def save_build_state(folder: Path, state: dict) -> None:
    d = folder / BUILD_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".state.{uuid.uuid4().hex[:6]}.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, d / "state.json")


def load_build_state(folder: Path) -> dict | None:
    p = folder / BUILD_DIR / "state.json"
    return json.loads(p.read_text()) if p.is_file() else None


class DatabaseWriter:
    """Appends DataFrames to the tables of a new store database (columns matched by name)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def append(self, table: str, df: pd.DataFrame | None) -> None:
        if df is None or len(df) == 0:
            return
        self.con.register("_rows", df)
        try:
            self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
        finally:
            self.con.unregister("_rows")

    def set_meta(self, meta: dict) -> None:
        for key, value in meta.items():
            self.con.execute("INSERT INTO store_meta VALUES (?, ?)", [key, json.dumps(value)])


@contextmanager
def new_database(folder: Path) -> Iterator[DatabaseWriter]:
    """Create `folder/store.duckdb` with every schema table; checkpointed and closed on exit."""
    db = folder / schema.STORE_DB
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    try:
        create_tables(con)
        yield DatabaseWriter(con)
        con.execute("CHECKPOINT")
    finally:
        con.close()


def write_database(folder: Path, tables: dict[str, pd.DataFrame], meta: dict) -> None:
    """Create `folder/store.duckdb` with every schema table, filled from DataFrames by name."""
    with new_database(folder) as db:
        for name, df in tables.items():
            db.append(name, df)
        db.set_meta(meta)


def finish_staging(folder: Path) -> None:
    """Drop a finished build's bookkeeping and interrupted-write leftovers before publication."""
    shutil.rmtree(folder / BUILD_DIR, ignore_errors=True)
    for p in (folder / schema.STORE_ZARR).rglob("*.partial"):
        p.unlink(missing_ok=True)
