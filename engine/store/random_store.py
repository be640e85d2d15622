"""A published store of random head contributions with a real model's shape (tests, benchmarks).

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
) -> Path:
    """Write and publish `link`: head_out [image, layer(last 4), head, d_embed] random fp16.

    `output` is the sum of the stored heads; thumbnails are random pixels when `thumbnails`, else
    left blank. Returns the published version's folder.
    """
    dims = dict(dims or VIT_B_32)
    n_heads, d_embed = dims["n_heads"], dims["d_embed"]
    layers = list(range(dims["n_layers"] - 4, dims["n_layers"]))
    chunk = image_chunk or schema.image_chunk_for(len(layers), n_heads, d_embed)
    sizes = {
        "image": n_images,
        "layer": len(layers),
        "head": n_heads,
        "d_embed": d_embed,
        "y": schema.THUMB_SIZE,
        "x": schema.THUMB_SIZE,
        "rgb": 3,
        "image_chunk": chunk,
    }
    staging = store.staging_dir(link, uuid.uuid4().hex[:8])
    staging.mkdir(parents=True)
    arrays = store.create_arrays(staging, sizes, attrs={"layers": layers, "synthetic": True})
    rng = np.random.default_rng(seed)
    for start in range(0, n_images, chunk):  # one image chunk in RAM at a time
        n = min(chunk, n_images - start)
        head_out = 0.05 * rng.standard_normal((n, len(layers), n_heads, d_embed), dtype=np.float32)
        rows = {"head_out": head_out.astype(np.float16), "output": head_out.sum(axis=(1, 2))}
        if thumbnails:
            shape = (n, schema.THUMB_SIZE, schema.THUMB_SIZE, 3)
            rows["thumbnail"] = rng.integers(0, 255, shape, np.uint8)
        store.write_rows(arrays, start, rows)
    model = {
        "model_spec": spec,
        "arch": arch,
        "weights_hash": weights_hash,
        "random_weights": random_weights,
        **dims,
    }
    tables = {
        "models": pd.DataFrame([model]),
        "images": pd.DataFrame(
            {
                "image_id": np.arange(n_images, dtype=np.int32),
                "path": [f"random:{seed}/{i}" for i in range(n_images)],
                "sha256": ["0" * 64] * n_images,
                "width": dims["image_size"],
                "height": dims["image_size"],
                "class": None,
            }
        ),
    }
    meta = {
        "model_spec": spec,
        "arch": arch,
        "layers": layers,
        **dims,
        "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run_id": run_id or "random-" + uuid.uuid4().hex,
        "images_source": f"random data ({n_images} rows, seed {seed})",
        "random_data": True,
        "schema_version": schema.SCHEMA_VERSION,
        "thumb_size": schema.THUMB_SIZE,
    }
    store.write_database(staging, tables, meta)
    store.finish_staging(staging)
    return store.publish(link, staging)
