"""Reading a published store version (read-only; one reader per version, many per store)."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

import duckdb
import numpy as np
import pandas as pd
import zarr

from engine.errors import UserError
from engine.store import schema
from engine.store.cache import ByteBudgetCache
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

    Thread-safe for the dashboard: DuckDB queries go through a lock. Per-head coordinates read
    from Zarr are kept in a per-reader LRU cache bounded by `cache_bytes` (default: the
    `CLIP_INTERPRET_CACHE_MB` setting, `engine.store.cache`); closing the reader empties it.
    A store of an older format is refused with one line naming the command that rebuilds it.
    """

    def __init__(self, path: str | os.PathLike, *, cache_bytes: int | None = None):
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
        try:
            self._check_format()
            self._group = zarr.open_group(str(version / schema.STORE_ZARR), mode="r")
            rows = self._meta_rows()
            self.meta = schema.StoreMeta.from_rows(rows, where=str(self.path))
            self.model_record = self._load_model_record(schema.meta_version_of(rows))
        except BaseException:
            self.close()
            raise
        self._layers = list(self.meta.layers)
        self._rest_layers = [l for l in range(self.model_record.n_layers) if l not in self._layers]
        self.info = self._info_view()
        self.cache = ByteBudgetCache(cache_bytes)
        self._basis: np.ndarray | None = None

    def _check_format(self) -> None:
        """Refuse a store whose schema version this code does not read, with the rebuild command."""
        rows = self.query("SELECT value FROM store_meta WHERE key = 'schema_version'")
        found = json.loads(rows["value"].iloc[0]) if len(rows) else None
        if found == schema.SCHEMA_VERSION:
            return
        raise UserError(
            f"{self.path}: store format {found if found is not None else 'unknown'} is not "
            f"readable by this version (format {schema.SCHEMA_VERSION}); rebuild it with: "
            f"{self.rebuild_command()}"
        )

    def rebuild_command(self) -> str:
        """The command that rebuilds this store (from its own build record when there is one), for
        messages that ask for a rebuild: an older format, a build without neurons. The metadata
        is read as it was written, untyped, so any format's store can answer."""
        meta = {
            k: json.loads(v)
            for k, v in self.query("SELECT key, value FROM store_meta").itertuples(index=False)
        }
        if self.path.name == "demo" or meta.get("demo_store"):
            return f"python -m engine demo-store --store {self.path}"
        try:
            runs = self.query("SELECT parameters FROM runs WHERE kind = 'build' LIMIT 1")
            params = json.loads(runs["parameters"].iloc[0]) if len(runs) else {}
        except duckdb.Error:
            params = {}
        models = self.query("SELECT model_spec FROM models LIMIT 1")
        spec = models["model_spec"].iloc[0] if len(models) else meta.get("model_spec", "MODEL")
        images = params.get("images", "IMAGES")
        layers = params.get("layers_arg", "")
        cmd = f"python -m engine build --model {spec} --images {images}"
        if params.get("random_weights"):
            cmd += " --random-weights"
        if layers:
            cmd += f" --layers {layers}"
        return cmd + f" --store {self.path}"

    def _meta_rows(self) -> dict[str, str]:
        rows = self.query("SELECT key, value FROM store_meta")
        return {
            k: v for k, v in rows.itertuples(index=False) if k != schema.INTERPRETATION_META_KEY
        }

    def _load_model_record(self, meta_version: int) -> schema.ModelRecord:
        models = self.query("SELECT * FROM models")
        if len(models) != 1:
            raise UserError(f"{self.path}: the models table holds {len(models)} rows, not 1 "
                            "(a broken store; rebuild it)")  # fmt: skip
        return schema.ModelRecord.from_row(
            models.iloc[0].to_dict(), where=str(self.path), meta_version=meta_version
        )

    def _info_view(self) -> dict:
        """A flat read-only dict of the typed records (`meta`, `model`) plus derived facts, for
        code that reads facts by name; every value comes from one persisted place."""
        meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.meta).items()}
        return MappingProxyType({
            **self.model_record.as_row(), **meta, "rest_layers": list(self._rest_layers),
            "d_coord": self.d_coord,
            "n_images": int(self._group["output"].shape[0]),
            "interpretation": self.interpretation,
        })  # fmt: skip

    @property
    def interpretation(self) -> dict | None:
        """The latest interpretation's parameters (None before `interpret`)."""
        rows = self.query(
            "SELECT value FROM store_meta WHERE key = ?", [schema.INTERPRETATION_META_KEY]
        )
        return json.loads(rows["value"].iloc[0]) if len(rows) else None

    # ---- table reads (the SQL stays here, in engine.store)

    def table(self, name: str) -> pd.DataFrame:
        """A whole store table as a DataFrame (every schema table exists; may be empty)."""
        if name not in schema.TABLES:
            raise UserError(f"{name!r} is not a store table ({', '.join(schema.TABLES)})")
        return self.query(f"SELECT * FROM {name}")

    def has_rows(self, name: str) -> bool:
        if name not in schema.TABLES:
            raise UserError(f"{name!r} is not a store table ({', '.join(schema.TABLES)})")
        return len(self.query(f"SELECT 1 FROM {name} LIMIT 1")) > 0

    def textspan(self, layer: int | None = None, head: int | None = None) -> pd.DataFrame:
        """TextSpan rows ordered by (layer, head, rank); one head's when given."""
        if layer is None:
            return self.query('SELECT * FROM textspan ORDER BY layer, head, "rank"')
        return self.query(
            'SELECT * FROM textspan WHERE layer = ? AND head = ? ORDER BY "rank"',
            [int(layer), int(head)],
        )

    def head_label_rows(self) -> pd.DataFrame:
        """head_labels ordered by (layer, head): layer, head, label, labeller, votes, run_id."""
        return self.query("SELECT * FROM head_labels ORDER BY layer, head")

    def score_rows(self) -> pd.DataFrame:
        """The interpretation's scores, range scope first."""
        return self.query("SELECT * FROM scores ORDER BY scope DESC, layer_from, metric")

    def llm_responses(self) -> dict[str, str]:
        """prompt_hash -> response of the LLM labeller's cache."""
        df = self.query("SELECT prompt_hash, response FROM llm_cache")
        return dict(zip(df["prompt_hash"], df["response"], strict=True))

    def skipped_files(self, limit: int | None = None) -> pd.DataFrame:
        sql = "SELECT path, reason FROM skipped_files ORDER BY path"
        return self.query(sql + (f" LIMIT {int(limit)}" if limit else ""))

    def runs(self, kind: str | None = None) -> pd.DataFrame:
        if kind is None:
            return self.query("SELECT * FROM runs ORDER BY started_at")
        return self.query("SELECT * FROM runs WHERE kind = ? ORDER BY started_at", [kind])

    def zeroshot_classes(self) -> pd.DataFrame:
        return self.query("SELECT * FROM zeroshot_classes ORDER BY task, class_index")

    @property
    def is_stale(self) -> bool:
        """True when the store link now points at a newer version (reopen to see it)."""
        try:
            return Path(os.path.realpath(self.path)) != self.version_path
        except OSError:
            return True

    def close(self) -> None:
        if getattr(self, "cache", None) is not None:
            self.cache.clear()
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
        """Absolute indices of the layers whose heads are stored (in `coord`)."""
        return self._layers

    @property
    def rest_layers(self) -> list[int]:
        """The other layers: their heads are stored summed, in `attn_rest` (same order)."""
        return self._rest_layers

    @property
    def pooled(self) -> bool:
        """A store of an attention-pooled tower (SigLIP): shared basis, pooled-only arrays."""
        return self.meta.pooling != "class_token"

    @property
    def d_coord(self) -> int:
        """The width of every head's coordinates (d_head for CLIP; d_embed for SigLIP)."""
        return self.model_record.d_head if self.meta.d_coord is None else int(self.meta.d_coord)

    @property
    def n_heads(self) -> int:
        return int(self._group["coord"].shape[2])

    @property
    def coord_array(self) -> zarr.Array:
        """Lazy zarr array [image, layer (stored), head, d_coord] fp16."""
        return self._group["coord"]

    def _index(self, layer: int, head: int) -> int:
        if layer not in self._layers:
            raise UserError(f"layer {layer} is not stored (stored layers: {self._layers})")
        if not 0 <= head < self.n_heads:
            raise UserError(f"head {head} out of range (0..{self.n_heads - 1})")
        return self._layers.index(layer)

    def basis(self, layer: int, head: int) -> np.ndarray:
        """Orthonormal basis of head (layer, head): float32 [d_coord, d_embed] (zero rows past
        its rank); `coords(layer, head) @ basis(layer, head)` is the head's contribution. In a
        store with `meta.basis_shared` every head returns the same one."""
        li = self._index(layer, head)
        b = self.bases()
        return b[0, 0] if self.meta.basis_shared else b[li, head]

    def bases(self) -> np.ndarray:
        """The stored basis array, float32 [basis_layer, basis_head, d_coord, d_embed] (1 x 1
        when shared; read once, read-only)."""
        if self._basis is None:
            b = np.asarray(self._group["basis"][...], dtype=np.float32)
            b.setflags(write=False)
            self._basis = b
        return self._basis

    def basis_per_head(self) -> np.ndarray:
        """[layer, head, d_coord, d_embed]: a read-only broadcast view when shared (no copy)."""
        b = self.bases()
        if not self.meta.basis_shared:
            return b
        return np.broadcast_to(b, (len(self._layers), self.n_heads, *b.shape[2:]))

    def coords(self, layer: int, head: int, *, cache: bool = True) -> np.ndarray:
        """Coordinates of head (layer, head) for every image: float32 [image, d_coord].

        layer is the absolute layer index (one of `self.layers`). Cached within the reader's
        byte budget (`cache=False` reads around the cache: a pass over every head once)."""
        li = self._index(layer, head)

        def read() -> np.ndarray:
            out = np.asarray(self._group["coord"][:, li, head, :], dtype=np.float32)
            out.setflags(write=False)  # shared by the cache
            return out

        if not cache:
            return read()
        return self.cache.get(("coord", layer, head), read)

    def head_out(self, layer: int, head: int) -> np.ndarray:
        """Contributions of head (layer, head) in embedding space: float32 [image, d_embed]
        (= coords @ basis, computed on each call; prefer `coords` for anything that ranks)."""
        return self.coords(layer, head) @ self.basis(layer, head)

    def output(self) -> np.ndarray:
        """Image embeddings (unnormalised), float32 [image, d_embed]."""
        return self._group["output"][:]

    def std(self) -> np.ndarray:
        """ln_post's residual standard deviation per image, float32 [image]."""
        return self._group["std"][:]

    def has_array(self, name: str) -> bool:
        """Does this store hold the schema array (pooled-only arrays: in pooled stores only)?"""
        if name not in schema.ARRAYS:
            raise UserError(f"no array {name!r} in the store schema ({', '.join(schema.ARRAYS)})")
        return not schema.ARRAYS[name].pooled_only or self.pooled

    def array(self, name: str) -> np.ndarray:
        """Any schema array in full (e.g. mlp, attn_rest, embed, std, attn_bias, ln_bias)."""
        return self.lazy(name)[...]

    def lazy(self, name: str) -> zarr.Array:
        """A schema array without reading it (slice it to read a part)."""
        if not self.has_array(name):
            raise UserError(f"{self.path}: {name!r} is held only by stores of attention-pooled "
                            "towers (SigLIP); this store's tower pools its class token")  # fmt: skip
        return self._group[name]

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
        names = list(self.meta.factors or sorted(df["factor"].unique()))
        wide = df.pivot(index="image_id", columns="factor", values="value_code")
        wide = wide.reindex(index=range(self.info["n_images"]), columns=names)
        return list(names), wide.to_numpy(dtype=np.int64)

    def head_labels(self) -> dict[tuple[int, int], str]:
        """(layer, head) -> label from the store's interpretation (empty before `interpret`)."""
        df = self.query("SELECT layer, head, label FROM head_labels")
        return {(int(l), int(h)): str(lab) for l, h, lab in df.itertuples(index=False)}

    @property
    def interpreted(self) -> bool:
        n = self.query(
            "SELECT (SELECT count(*) FROM textspan) + (SELECT count(*) FROM head_labels) AS n"
        )
        return bool(n["n"].iloc[0] > 0)


def open_store(path: str | os.PathLike, *, cache_bytes: int | None = None) -> StoreReader:
    """Open a store read-only; `path` may be the store link or a version folder."""
    return StoreReader(path, cache_bytes=cache_bytes)


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
                        model_spec=r.model_record.model_spec,
                        n_images=int(r.info["n_images"]),
                        interpreted=r.interpreted,
                        built_at=r.meta.built_at,
                    )
                )
        except (UserError, duckdb.Error, OSError, KeyError):
            continue  # not a store we can read; listing must not fail
    return out
