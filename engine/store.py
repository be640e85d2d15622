"""All store I/O: versions, atomic publication, read-only readers, copy-on-write mutation.

Layout under a root folder (default `artifacts/`) for a store called NAME:

    NAME -> .NAME.versions/<version>       the published version (a relative symlink)
    .NAME.versions/<version>/              store.duckdb + contrib.zarr/ + .lock
    .NAME.versions/staging-<key>/          a build in progress (resumable, never read)
    .NAME.versions/.tmp-<id>/              a mutation in progress (discarded on error)
    .NAME.lock                             serialises publication and mutation of NAME

Publication renames a finished folder to a new version name and swaps the symlink with
`os.replace`, so readers see the old version or the new one, never a half-built one. A reader
resolves the link once and keeps reading its version; it holds a shared `flock` on the version's
`.lock`, and garbage collection (keep the current and the previous version) never deletes a
version that a reader holds. Published versions are never written again: DuckDB readers open
read-only, and `mutate_store` writes a copy (DuckDB file copied, Zarr hard-linked).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import zarr

from engine import schema
from engine.errors import UserError

LOCK_FILE = ".lock"
STAGING_PREFIX = "staging-"
TMP_PREFIX = ".tmp-"
BUILD_DIR = "build"  # per-chunk records of a build in progress, inside a staging folder
KEEP_VERSIONS = 2  # the current one and the previous one
STALE_STAGING_S = 7 * 24 * 3600  # unfinished builds untouched this long are deleted by gc


# ---------------------------------------------------------------- paths and versions


def versions_dir(link: Path) -> Path:
    """`artifacts/NAME` -> `artifacts/.NAME.versions`."""
    link = Path(link)
    return link.parent / f".{link.name}.versions"


def _lock_path(link: Path) -> Path:
    return Path(link).parent / f".{Path(link).name}.lock"


def resolve(path: str | os.PathLike) -> Path:
    """The version folder a store path points at now (the link resolved once, or the folder)."""
    p = Path(path)
    real = Path(os.path.realpath(p))
    if not (real / schema.STORE_DB).is_file():
        if p.is_symlink() or p.exists():
            raise UserError(f"{path} is not a complete store (no {schema.STORE_DB})")
        raise UserError(f"no store at {path}")
    return real


def _new_version_name(vdir: Path) -> str:
    """`v000007-20261129T101500`: a sequence number (call with the store lock held), then time."""
    seqs = [int(p.name[1:7]) for p in vdir.glob("v*") if p.name[1:7].isdigit()]
    return f"v{max(seqs, default=0) + 1:06d}-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime())


@contextmanager
def _store_lock(link: Path) -> Iterator[None]:
    """Exclusive lock serialising publication/mutation of one store (blocks until free)."""
    path = _lock_path(link)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _swap_link(link: Path, target: Path) -> None:
    """Point `link` at `target` atomically (a temp symlink moved over it with os.replace)."""
    link = Path(link)
    if link.exists() and not link.is_symlink():
        raise UserError(f"{link} exists and is not a store link; move it away first")
    tmp = link.parent / f".{link.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


def publish(link: str | os.PathLike, folder: Path) -> Path:
    """Publish a finished folder as the store's new version; returns the version path."""
    link = Path(link)
    with _store_lock(link):
        if link.exists() and not link.is_symlink():
            raise UserError(f"{link} exists and is not a store link; move it away first")
        version = versions_dir(link) / _new_version_name(versions_dir(link))
        os.rename(folder, version)
        (version / LOCK_FILE).touch()
        _fsync_dir(version.parent)
        _swap_link(link, version)
        _fsync_dir(link.parent)
        gc(link)
    return version


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def gc(link: str | os.PathLike, keep: int = KEEP_VERSIONS) -> list[Path]:
    """Delete published versions beyond the newest `keep` (current first), except held ones.

    Call with the store lock held (publish and mutate_store do). Returns the deleted folders.
    """
    link = Path(link)
    vdir = versions_dir(link)
    if not vdir.is_dir():
        return []
    current = Path(os.path.realpath(link)) if link.is_symlink() else None
    versions = sorted(
        (p for p in vdir.iterdir() if p.name.startswith("v") and p.is_dir()),
        key=lambda p: p.name,
        reverse=True,
    )
    keepers = ([current] if current else []) + [v for v in versions if v != current]
    deleted = []
    for v in keepers[keep:]:
        if _try_delete(v):
            deleted.append(v)
    for p in vdir.iterdir():  # mutations interrupted by a crash (the lock proves none is live)
        if p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(STAGING_PREFIX) and _age_s(p / BUILD_DIR) > STALE_STAGING_S:
            shutil.rmtree(p, ignore_errors=True)  # a build abandoned long ago
    return deleted


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _try_delete(version: Path) -> bool:
    """Delete a version unless a reader holds its lock (shared flock)."""
    lock = version / LOCK_FILE
    try:
        f = open(lock, "a")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(version, ignore_errors=True)
        return True


# ---------------------------------------------------------------- writing a new version


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


@contextmanager
def mutate_store(path: str | os.PathLike) -> Iterator[duckdb.DuckDBPyConnection]:
    """A writable DuckDB connection on a new copy-on-write version, published on clean exit.

    The DuckDB file is copied and the Zarr group hard-linked; on an exception the copy is
    discarded and the published store is untouched. Mutations of one store are serialised.
    """
    link = Path(path)
    if not link.is_symlink():
        raise UserError(f"{path} is not a store link (expected artifacts/NAME)")
    with _store_lock(link):
        current = resolve(link)
        tmp = versions_dir(link) / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            shutil.copy2(current / schema.STORE_DB, tmp / schema.STORE_DB)
            shutil.copytree(
                current / schema.STORE_ZARR, tmp / schema.STORE_ZARR, copy_function=os.link
            )
            con = duckdb.connect(str(tmp / schema.STORE_DB))
            try:
                yield con
                con.execute("CHECKPOINT")
            finally:
                con.close()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        version = versions_dir(link) / _new_version_name(versions_dir(link))
        os.rename(tmp, version)
        (version / LOCK_FILE).touch()
        _swap_link(link, version)
        _fsync_dir(link.parent)
        gc(link)


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class StoreSummary:
    name: str
    path: str
    model_spec: str
    n_images: int
    interpreted: bool
    built_at: str = ""


class StoreReader:
    """Read-only view of one store version (resolved once at open; later swaps do not affect it).

    Thread-safe for the dashboard: DuckDB queries go through a lock.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        for _ in range(5):  # a concurrent publish+gc may delete a version between resolve and lock
            version = resolve(self.path)
            self._lock_file = open(version / LOCK_FILE, "a")
            fcntl.flock(self._lock_file, fcntl.LOCK_SH)
            if (version / schema.STORE_DB).is_file():
                break
            self._lock_file.close()
        else:
            raise UserError(f"store {path} keeps changing; try again")
        self.version_path = version
        self._db_lock = threading.Lock()
        self._con = duckdb.connect(str(version / schema.STORE_DB), read_only=True)
        self._group = zarr.open_group(str(version / schema.STORE_ZARR), mode="r")
        self.info = self._load_info()
        self._layers = list(self.info.get("layers", []))

    def _load_info(self) -> dict:
        info = {
            k: json.loads(v)
            for k, v in self.query("SELECT key, value FROM store_meta").itertuples(index=False)
        }
        models = self.query("SELECT * FROM models")
        if len(models):
            row = models.iloc[0].to_dict()
            row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            info = {**row, **info}
        info["n_images"] = int(self._group["output"].shape[0])
        return info

    @property
    def is_stale(self) -> bool:
        """True when the store link now points at a newer version (reopen to see it)."""
        try:
            return Path(os.path.realpath(self.path)) != self.version_path
        except OSError:
            return True

    def close(self) -> None:
        with self._db_lock:
            self._con.close()
        self._lock_file.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def query(self, sql: str, params: list | dict | None = None) -> pd.DataFrame:
        """Run SQL on the (read-only) store database."""
        with self._db_lock:
            cur = self._con.cursor()
            try:
                return cur.execute(sql, params).df() if params else cur.execute(sql).df()
            finally:
                cur.close()

    def images(self) -> pd.DataFrame:
        """The images table: image_id, path, sha256, width, height, class (ordered by image_id)."""
        df = self.query("SELECT * FROM images ORDER BY image_id")
        df["class"] = df["class"].astype(object).where(df["class"].notna(), None)  # NULL -> None
        return df

    @property
    def layers(self) -> list[int]:
        """Absolute indices of the layers stored in head_out."""
        return self._layers

    @property
    def head_out_array(self) -> zarr.Array:
        """Lazy zarr array [image, layer (stored), head, d_embed] fp16."""
        return self._group["head_out"]

    @functools.lru_cache(maxsize=64)  # noqa: B019 — one reader per store version, kept open
    def head_out(self, layer: int, head: int) -> np.ndarray:
        """Contributions of head (layer, head) to every image: float32 [image, d_embed].

        layer is the absolute layer index (one of `self.layers`).
        """
        if layer not in self._layers:
            raise UserError(f"layer {layer} is not stored (stored layers: {self._layers})")
        n_heads = self.head_out_array.shape[2]
        if not 0 <= head < n_heads:
            raise UserError(f"head {head} out of range (0..{n_heads - 1})")
        li = self._layers.index(layer)
        out = self.head_out_array[:, li, head, :].astype(np.float32)
        out.setflags(write=False)  # shared by the cache
        return out

    def output(self) -> np.ndarray:
        """Image embeddings (unnormalised), float32 [image, d_embed]."""
        return self._group["output"][:]

    def array(self, name: str) -> np.ndarray:
        """Any schema array in full (e.g. resid_norm, ln_scale)."""
        return self._group[name][:]

    def thumbnails(self, image_ids) -> np.ndarray:
        """Thumbnails of the given images, uint8 [image, T, T, 3] in the order given."""
        ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            t = schema.THUMB_SIZE
            return np.zeros((0, t, t, 3), np.uint8)
        order = np.argsort(ids, kind="stable")
        uniq, inverse = np.unique(ids[order], return_inverse=True)
        got = self._group["thumbnail"].get_orthogonal_selection((uniq,))
        out = np.empty((ids.size, *got.shape[1:]), np.uint8)
        out[order] = got[inverse]
        return out

    def factors(self) -> tuple[list[str], np.ndarray] | None:
        """Demo-world ground truth: (factor names, int codes [image, factor]) or None."""
        df = self.query("SELECT image_id, factor, value_code FROM image_factors")
        if len(df) == 0:
            return None
        names = self.info.get("factors") or sorted(df["factor"].unique())
        wide = df.pivot(index="image_id", columns="factor", values="value_code")
        wide = wide.reindex(index=range(self.info["n_images"]), columns=names)
        return list(names), wide.to_numpy(dtype=np.int64)

    @property
    def interpreted(self) -> bool:
        n = self.query(
            "SELECT (SELECT count(*) FROM textspan) + (SELECT count(*) FROM head_labels) AS n"
        )
        return bool(n["n"].iloc[0] > 0)


def open_store(path: str | os.PathLike) -> StoreReader:
    """Open a store read-only; `path` may be the store link or a version folder."""
    return StoreReader(path)


def list_stores(root: str | os.PathLike = "artifacts") -> list[StoreSummary]:
    """Published stores under `root` (the links; hidden version folders are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not (p / schema.STORE_DB).is_file():
            continue
        try:
            with open_store(p) as r:
                out.append(
                    StoreSummary(
                        name=p.name,
                        path=str(p),
                        model_spec=str(r.info.get("model_spec", "")),
                        n_images=int(r.info["n_images"]),
                        interpreted=r.interpreted,
                        built_at=str(r.info.get("built_at", "")),
                    )
                )
        except (UserError, duckdb.Error, OSError, KeyError):
            continue  # not a store we can read; listing must not fail
    return out
