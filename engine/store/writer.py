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
from engine.store.db import StoreWriter
from engine.store.versions import BUILD_DIR, STAGING_PREFIX, versions_dir


def create_tables(con: duckdb.DuckDBPyConnection) -> None:
    """Create every table of schema.TABLES (in a fresh DuckDB file)."""
    for sql in schema.TABLES.values():
        con.execute(sql)


def create_arrays(folder: Path, sizes: dict[str, int]) -> dict:
    """Create (overwrite) every Zarr array of the schema in `folder/contrib.zarr`.

    sizes: every dimension size (`schema.array_sizes`), plus image_chunk. The group carries no
    attributes: the store's facts are its `StoreMeta` record (each persisted once).
    """
    group = zarr.open_group(str(folder / schema.STORE_ZARR), mode="w", zarr_format=3)
    arrays = {}
    for spec in schema.ARRAYS.values():
        if not spec.applies(sizes):  # pooled-only arrays in a class-token store
            continue
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
    """The store's schema arrays (those it holds: pooled-only ones only in pooled stores)."""
    group = zarr.open_group(str(folder / schema.STORE_ZARR), mode=mode)
    present = set(group.array_keys())
    return {name: group[name] for name in schema.ARRAYS if name in present}


def write_rows(arrays: dict, start: int, data: dict[str, np.ndarray]) -> None:
    """Write one image chunk: data[name] holds rows [start, start + n) of array `name`."""
    for name, value in data.items():
        if not schema.ARRAYS[name].per_image:
            raise ValueError(f"{name} is not a per-image array; use write_constants")
        arrays[name][start : start + len(value)] = value


def write_constants(arrays: dict, data: dict[str, np.ndarray]) -> None:
    """Write the arrays that depend only on the weights (basis, rank, attn_bias, ln_bias) whole."""
    for name, value in data.items():
        if schema.ARRAYS[name].per_image:
            raise ValueError(f"{name} is a per-image array; use write_rows")
        arrays[name][...] = value


def resize_images(arrays: dict, n_images: int) -> None:
    """Shrink/grow every per-image array's image dimension to `n_images`."""
    for name, arr in arrays.items():
        if schema.ARRAYS[name].per_image:
            arr.resize((n_images, *arr.shape[1:]))


def staging_dir(link: str | os.PathLike, key: str) -> Path:
    return versions_dir(Path(link)) / f"{STAGING_PREFIX}{key}"


def save_chunk_record(folder: Path, k: int, record: dict) -> None:
    """Mark image chunk k done (after its arrays are written): an atomically written JSON."""
    d = folder / BUILD_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".chunk-{k:06d}.{uuid.uuid4().hex[:6]}.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, _chunk_record_path(folder, k))


def _chunk_record_path(folder: Path, k: int) -> Path:
    return folder / BUILD_DIR / f"chunk-{k:06d}.json"


def recorded_chunks(folder: Path) -> set[int]:
    """The chunks of a build whose records exist (their arrays are written)."""
    d = folder / BUILD_DIR
    if not d.is_dir():
        return set()
    return {int(p.stem[6:]) for p in d.glob("chunk-*.json") if p.stem[6:].isdigit()}


def load_chunk_record(folder: Path, k: int) -> dict | None:
    p = _chunk_record_path(folder, k)
    return json.loads(p.read_text()) if p.is_file() else None


def iter_chunk_records(folder: Path) -> Iterator[dict]:
    """Records of a build's completed chunks in chunk order, read one at a time."""
    for k in sorted(recorded_chunks(folder)):
        rec = load_chunk_record(folder, k)
        if rec is not None:
            yield rec


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


@contextmanager
def new_database(folder: Path) -> Iterator[StoreWriter]:
    """Create `folder/store.duckdb` with every schema table; checkpointed and closed on exit."""
    db = folder / schema.STORE_DB
    db.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    try:
        create_tables(con)
        yield StoreWriter(con)
        con.execute("CHECKPOINT")
    finally:
        con.close()


def write_database(
    folder: Path,
    tables: dict[str, pd.DataFrame],
    meta: schema.StoreMeta,
    model: schema.ModelRecord,
) -> None:
    """Create `folder/store.duckdb` with every schema table: the metadata record, the model
    record and the given tables (DataFrames by name)."""
    with new_database(folder) as db:
        db.set_meta(meta)
        db.set_model(model)
        for name, df in tables.items():
            db.append(name, df)


def finish_staging(folder: Path) -> None:
    """Drop a finished build's bookkeeping and interrupted-write leftovers before publication."""
    shutil.rmtree(folder / BUILD_DIR, ignore_errors=True)
    for p in (folder / schema.STORE_ZARR).rglob("*.partial"):
        p.unlink(missing_ok=True)


COMPACT_DIR = ".compact"  # staging/.compact/contrib.zarr: the compacted arrays being written
SPARSE_ZARR = ".sparse.zarr"  # the chunk-addressed arrays, moved aside while swapping


def compact_rows(folder: Path, parts: list[tuple[int, int]], sizes: dict) -> None:
    """Make the rows `parts = [(start, n), ...]` of `folder/contrib.zarr` consecutive from row 0.

    Streams one array at a time into a new group, writing whole shards of `sizes["image_chunk"]`
    rows (at most two chunks of one array in memory), then swaps it in by renames. Idempotent and
    crash-safe: rerun after a kill it finishes the swap or starts the copy over.
    """
    zdir, tmp, sparse = folder / schema.STORE_ZARR, folder / COMPACT_DIR, folder / SPARSE_ZARR
    marker = folder / BUILD_DIR / "compacted"
    if not marker.exists():
        if not sparse.is_dir():  # nothing swapped yet: (re)write the compacted copy
            shutil.rmtree(tmp, ignore_errors=True)
            total = sum(n for _, n in parts)
            src = open_arrays(folder, mode="r")
            dst = create_arrays(tmp, {**sizes, "image": total})
            chunk = int(sizes["image_chunk"])
            for name, spec in schema.ARRAYS.items():
                if name not in src:  # an array this store does not hold
                    continue
                if spec.per_image:
                    _copy_rows(src[name], dst[name], parts, chunk)
                else:  # weight-only constants: copied whole
                    dst[name][...] = src[name][...]
            os.rename(zdir, sparse)
        if not zdir.is_dir():
            os.rename(tmp / schema.STORE_ZARR, zdir)
        marker.touch()
    shutil.rmtree(sparse, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


def _copy_rows(src, dst, parts: list[tuple[int, int]], chunk: int) -> None:
    buf = np.zeros((chunk, *src.shape[1:]), src.dtype)
    filled, written = 0, 0
    for start, n in parts:
        done = 0
        while done < n:
            take = min(n - done, chunk - filled)
            buf[filled : filled + take] = src[start + done : start + done + take]
            filled, done = filled + take, done + take
            if filled == chunk:
                dst[written : written + chunk] = buf
                written, filled = written + chunk, 0
    if filled:
        dst[written : written + filled] = buf[:filled]
