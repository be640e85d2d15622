"""Reading a published store version (read-only; one reader per version, many per store)."""

from __future__ import annotations

import fcntl
import functools
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import zarr

from engine.errors import UserError
from engine.store import schema
from engine.store.versions import LOCK_FILE, resolve


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
            try:  # never create files in a version: gc may be deleting it right now
                self._lock_file = open(version / LOCK_FILE, "rb")
            except FileNotFoundError:
                continue  # collected after we resolved it: resolve the link again
            fcntl.flock(self._lock_file, fcntl.LOCK_SH)
            if (version / schema.STORE_DB).is_file():  # still there once locked: it stays
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
