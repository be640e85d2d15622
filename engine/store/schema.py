"""THE store schema, declared once: every Zarr array and every DuckDB table.

A store version is a folder holding `store.duckdb` (tables below) and `contrib.zarr/` (a Zarr v3
group with the arrays below). The writer (`engine.store`, `engine.pipeline.build`), the dashboard and the
tests all import these declarations; nothing else spells a table or an array layout.

Array layout: every array's first dimension is `image` (the store's image index, equal to
`images.image_id`). `head_out` is chunked for the dashboard's main read, one (layer, head) over all
images: inner chunks `(image_chunk, 1, 1, d_embed)` packed into shards `(image_chunk, layer, head,
d_embed)`, so a build writes exactly one whole shard per image chunk (no read-modify-write) and a
reader of one head reads one small inner chunk per shard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STORE_DB = "store.duckdb"
STORE_ZARR = "contrib.zarr"
SCHEMA_VERSION = 1
THUMB_SIZE = 64  # thumbnails are letterboxed to [THUMB_SIZE, THUMB_SIZE, 3]
DEFAULT_LAST_LAYERS = 4
MAX_IMAGE_CHUNK = 1024
MIN_IMAGE_CHUNK = 64
HEAD_OUT_CHUNK_BUDGET = 64 * 2**20  # bytes of one image chunk of head_out (fp16), kept in RAM

ALL = -1  # a chunk/shard extent meaning "the whole dimension"
IMAGE_CHUNK = -2  # a chunk/shard extent meaning "the store's image chunk"


@dataclass(frozen=True)
class ArraySpec:
    """One Zarr array: dimension names, dtype, chunk and shard extents per dimension."""

    name: str
    dims: tuple[str, ...]
    dtype: str
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None
    description: str
    compress: bool = False  # zstd per inner chunk (thumbnails); contributions stay raw

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """Concrete shape from dimension sizes, e.g. {"image": 5000, "layer": 4, ...}."""
        return tuple(int(sizes[d]) for d in self.dims)

    def _extent(self, spec: tuple[int, ...], sizes: dict[str, int]) -> tuple[int, ...]:
        out = []
        for d, e in zip(self.dims, spec, strict=True):
            if e == ALL:
                out.append(max(1, int(sizes[d])))
            elif e == IMAGE_CHUNK:
                out.append(int(sizes["image_chunk"]))
            else:
                out.append(int(e))
        return tuple(out)

    def chunk_shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        return self._extent(self.chunks, sizes)

    def shard_shape(self, sizes: dict[str, int]) -> tuple[int, ...] | None:
        return None if self.shards is None else self._extent(self.shards, sizes)


ARRAYS: dict[str, ArraySpec] = {
    a.name: a
    for a in [
        ArraySpec(
            "head_out",
            ("image", "layer", "head", "d_embed"),
            "float16",
            (IMAGE_CHUNK, 1, 1, ALL),
            (IMAGE_CHUNK, ALL, ALL, ALL),
            "direct contribution of each stored (layer, head) to the image embedding, through "
            "ln_post linearised with the image's residual std, then proj",
        ),
        ArraySpec(
            "output",
            ("image", "d_embed"),
            "float32",
            (IMAGE_CHUNK, ALL),
            None,
            "image embedding (encode_image, not normalised) = sum of all components",
        ),
        ArraySpec(
            "resid_norm",
            ("image",),
            "float32",
            (IMAGE_CHUNK,),
            None,
            "L2 norm of the image embedding `output` (before normalisation)",
        ),
        ArraySpec(
            "ln_scale",
            ("image",),
            "float32",
            (IMAGE_CHUNK,),
            None,
            "std of the final class-token residual used to linearise ln_post",
        ),
        ArraySpec(
            "thumbnail",
            ("image", "y", "x", "rgb"),
            "uint8",
            (1, ALL, ALL, ALL),  # one image per inner chunk: neighbours are read one by one
            (IMAGE_CHUNK, ALL, ALL, ALL),
            f"{THUMB_SIZE}px letterboxed RGB thumbnail",
            compress=True,
        ),
    ]
}


def image_chunk_for(n_layers_stored: int, n_heads: int, d_embed: int) -> int:
    """Images per chunk: a power of two in [64, 1024] keeping one head_out chunk under budget."""
    per_image = max(1, n_layers_stored * n_heads * d_embed * 2)
    n = max(MIN_IMAGE_CHUNK, min(MAX_IMAGE_CHUNK, HEAD_OUT_CHUNK_BUDGET // per_image))
    return 2 ** int(math.log2(n))


# DuckDB tables. Interpretation tables (textspan .. ground_truth): the interpretation engineer may
# add columns there.
TABLES: dict[str, str] = {
    "store_meta": """
CREATE TABLE store_meta (
    key VARCHAR PRIMARY KEY,
    value JSON
)""",
    "models": """
CREATE TABLE models (
    model_spec VARCHAR PRIMARY KEY,
    arch VARCHAR,
    weights_hash VARCHAR,
    random_weights BOOLEAN,
    n_layers INTEGER,
    n_heads INTEGER,
    d_model INTEGER,
    d_head INTEGER,
    d_embed INTEGER,
    image_size INTEGER,
    patch_size INTEGER,
    grid INTEGER
)""",
    "images": """
CREATE TABLE images (
    image_id INTEGER PRIMARY KEY,
    path VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    width INTEGER,
    height INTEGER,
    class VARCHAR
)""",
    "runs": """
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    model_spec VARCHAR,
    weights_hash VARCHAR,
    code_version VARCHAR,
    image_set_hash VARCHAR,
    parameters JSON,
    timings JSON,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    skipped_files JSON,
    host VARCHAR
)""",
    "skipped_files": """
CREATE TABLE skipped_files (
    run_id VARCHAR,
    path VARCHAR,
    reason VARCHAR
)""",
    "image_factors": """
CREATE TABLE image_factors (
    image_id INTEGER,
    factor VARCHAR,
    value_code INTEGER,
    value VARCHAR
)""",
    # ---- interpretation tables ----
    "textspan": """
CREATE TABLE textspan (
    layer INTEGER,
    head INTEGER,
    rank INTEGER,
    text VARCHAR,
    category VARCHAR,
    variance_removed DOUBLE,
    score_var DOUBLE,
    bank VARCHAR,
    run_id VARCHAR
)""",
    "head_labels": """
CREATE TABLE head_labels (
    layer INTEGER,
    head INTEGER,
    label VARCHAR,
    labeller VARCHAR,
    votes JSON,
    run_id VARCHAR
)""",
    "scores": """
CREATE TABLE scores (
    metric VARCHAR,
    scope VARCHAR,
    layer_from INTEGER,
    layer_to INTEGER,
    count INTEGER,
    total INTEGER,
    value DOUBLE,
    labeller VARCHAR,
    run_id VARCHAR
)""",
    "llm_cache": """
CREATE TABLE llm_cache (
    prompt_hash VARCHAR PRIMARY KEY,
    model VARCHAR,
    response VARCHAR,
    created_at TIMESTAMP
)""",
    "ground_truth": """
CREATE TABLE ground_truth (
    layer INTEGER,
    head INTEGER,
    factor VARCHAR,
    eta2 DOUBLE,
    is_dominant BOOLEAN,
    label VARCHAR,
    match BOOLEAN,
    run_id VARCHAR
)""",
}

INTERPRETATION_TABLES = ("textspan", "head_labels", "scores", "ground_truth")
