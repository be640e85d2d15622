"""A published store of random decompositions with a real model's shape (tests, benchmarks).

No model runs: the arrays are seeded random data of the right shapes, written and published
through `engine.store` exactly as a build would, so readers (dashboard, interpretation) cannot tell
the difference except by the `images_source` and `random_data` metadata.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from engine import store
from engine.store import schema

VIT_B_32 = {
    "n_layers": 12,
    "n_heads": 12,
    "d_model": 768,
    "d_head": 64,
    "d_embed": 512,
    "image_size": 224,
    "patch_size": 32,
    "grid": 7,
}


def random_basis(rng, n_layers: int, n_heads: int, d_head: int, d_embed: int) -> np.ndarray:
    """Random orthonormal rows per head: [layer, head, d_head, d_embed] float32."""
    g = rng.standard_normal((n_layers, n_heads, d_embed, d_head))
    q, _ = np.linalg.qr(g)  # [.., d_embed, d_head], orthonormal columns
    return np.ascontiguousarray(np.swapaxes(q, -1, -2)).astype(np.float32)


def write_random_store(
    link: Path,
    n_images: int,
    *,
    spec: str = "ViT-B-32",
    arch: str = "ViT-B-32",
    weights_hash: str = "random:seed0",
    random_weights: bool = True,
    dims: dict | None = None,
    thumbnails: bool = False,
    image_chunk: int | None = None,
    seed: int = 0,
    run_id: str | None = None,
    complete: bool = True,
    exact_output: bool = True,
    progress: bool = False,
) -> Path:
    """Write and publish `link`: the last 4 layers' heads as random coordinates (fp16) in random
    orthonormal bases, with a real model's shapes.

    complete: also random MLP / rest-attention / embedding terms (else left at zero, unwritten);
    exact_output: `output` is the exact sum of the stored terms (else random: a million-image
    benchmark store need not pay for the sum). Thumbnails are random pixels when `thumbnails`,
    else left blank. Returns the published version's folder.
    """
    dims = dict(dims or VIT_B_32)
    n_layers = dims["n_layers"]
    layers = list(range(n_layers - 4, n_layers))
    sizes = schema.array_sizes(
        n_images, n_layers, layers, dims["n_heads"], dims["d_head"], dims["d_embed"], 1
    )
    chunk = sizes["image_chunk"] = image_chunk or schema.image_chunk_for(sizes, n_images)
    staging = store.staging_dir(link, uuid.uuid4().hex[:8])
    staging.mkdir(parents=True)
    arrays = store.create_arrays(staging, sizes)
    rng = np.random.default_rng(seed)
    constants = _random_constants(rng, sizes)
    store.write_constants(arrays, constants)
    starts = range(0, n_images, chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, unit="chunk", desc=f"random store {link.name}")
    for start in starts:  # one image chunk in RAM at a time
        n = min(chunk, n_images - start)
        rows = _random_rows(rng, n, sizes, constants, complete, exact_output, thumbnails)
        store.write_rows(arrays, start, rows)
    model = schema.ModelRecord(
        model_spec=spec, arch=arch, weights_hash=weights_hash, random_weights=random_weights,
        tokenizer="open_clip (random data: the arch's own tokenizer)", **dims,
    )  # fmt: skip
    meta = _meta(layers, chunk, n_images, seed, run_id, int(dims["d_head"]))
    images = pd.DataFrame(
        {
            "image_id": np.arange(n_images, dtype=np.int32),
            "path": [f"random:{seed}/{i}" for i in range(n_images)],
            "sha256": ["0" * 64] * n_images,
            "width": dims["image_size"],
            "height": dims["image_size"],
            "class": None,
        }
    )
    store.write_database(staging, {"images": images}, meta, model)
    store.finish_staging(staging)
    return store.publish(link, staging)


def _meta(
    layers, chunk: int, n_images: int, seed: int, run_id: str | None, d_coord: int
) -> schema.StoreMeta:
    """The metadata record of a random store: no build, no model run (no provenance, no
    reconstruction figures), `random_data` set."""
    return schema.StoreMeta(
        schema_version=schema.SCHEMA_VERSION, layers=tuple(layers), image_chunk=chunk,
        thumb_size=schema.THUMB_SIZE, images_source=f"random data ({n_images} rows, seed {seed})",
        built_at=time.strftime("%Y-%m-%d %H:%M:%S"), run_id=run_id or "random-" + uuid.uuid4().hex,
        code_version=None, build_key=None, factors=None, image_set_hash=None, n_skipped=0,
        reconstruction_error=None, reconstruction_tolerance=None, random_data=True,
        pooling="class_token", d_coord=d_coord, basis_shared=False,
    )  # fmt: skip


def _random_constants(rng, sizes: dict) -> dict[str, np.ndarray]:
    """basis [layer, head, d_head, d_embed] (random orthonormal rows), rank, attn_bias, ln_bias."""
    n_stored, n_heads, d_head, d_embed = (sizes[k] for k in ("layer", "head", "d_head", "d_embed"))
    return {
        "basis": random_basis(rng, n_stored, n_heads, d_head, d_embed),
        "attn_bias": (0.01 * rng.standard_normal((n_stored, d_embed))).astype(np.float32),
        "ln_bias": (0.01 * rng.standard_normal(d_embed)).astype(np.float32),
        "rank": np.full((n_stored, n_heads), d_head, np.int32),
    }


def _random_rows(
    rng, n: int, sizes: dict, constants: dict, complete: bool, exact_output: bool, thumbnails: bool
) -> dict[str, np.ndarray]:
    """One image chunk of n rows: coord (fp16), std, the other terms when `complete`, output
    (their exact sum when `exact_output`), thumbnails when asked."""
    n_stored, n_heads, d_head, d_embed = (sizes[k] for k in ("layer", "head", "d_head", "d_embed"))
    coord = rng.standard_normal((n, n_stored, n_heads, d_head), dtype=np.float32)
    coord = (0.05 * coord).astype(np.float16)
    std = (1.0 + rng.random(n, dtype=np.float32)).astype(np.float32)
    rows = {"coord": coord, "std": std}
    if complete:
        for name, shape in (
            ("mlp", (n, sizes["layer_all"], d_embed)),
            ("attn_rest", (n, sizes["rest_layer"], d_embed)),
            ("embed", (n, d_embed)),
        ):
            rows[name] = (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16)
    if exact_output:
        flat_basis = constants["basis"].reshape(n_stored * n_heads * d_head, d_embed)
        out = coord.reshape(n, -1).astype(np.float32) @ flat_basis  # [image, d_embed]
        out += constants["attn_bias"].sum(axis=0)[None] / std[:, None] + constants["ln_bias"]
        for name in ("mlp", "attn_rest"):
            if name in rows:
                out += rows[name].astype(np.float32).sum(axis=1)
        if "embed" in rows:
            out += rows["embed"].astype(np.float32)
    else:
        out = rng.standard_normal((n, d_embed), dtype=np.float32)
    rows["output"] = out.astype(np.float32)
    if thumbnails:
        shape = (n, schema.THUMB_SIZE, schema.THUMB_SIZE, 3)
        rows["thumbnail"] = rng.integers(0, 255, shape, np.uint8)
    return rows
