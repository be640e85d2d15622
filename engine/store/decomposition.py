"""The stored decomposition as math objects: components and cached zero-shot class embeddings.

Reads a `StoreReader`; returns `engine.core` objects (the ablation's `ComponentSet`, arrays).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from engine.core.components import ComponentSet


def load_components(r) -> tuple[np.ndarray, ComponentSet]:
    """The store's complete decomposition: output [image, d_embed] and every term."""
    coord = r.array("coord").astype(np.float32)  # [image, layer, head, d_coord]
    pooled = {k: r.array(k) for k in ("attn_bias_image", "pool_mlp") if r.has_array(k)}
    comps = ComponentSet.from_arrays(
        coord=coord,
        basis=r.basis_per_head(),  # [layer, head, d_coord, d_embed] (a view when shared)
        head_layers=r.layers,
        mlp=r.array("mlp"),
        attn=r.array("attn_rest"),
        attn_layers=r.rest_layers,
        embed=r.array("embed"),
        attn_bias=r.array("attn_bias"),
        std=r.array("std"),
        ln_bias=r.array("ln_bias"),
        n_layers=int(r.info["n_layers"]),
        **pooled,
    )
    return r.output(), comps


def cached_class_embeddings(r, specs: list) -> dict[str, np.ndarray]:
    """Cached [class, d_embed] per task whose classes and prompts are unchanged."""
    df = r.query("SELECT * FROM zeroshot_classes ORDER BY task, class_index")
    out = {}
    for s in specs:
        g = df[df["task"] == s.name]
        if (
            g["class_name"].tolist() == s.class_names
            and [json.loads(p) for p in g["prompts"]] == s.prompts
        ):
            out[s.name] = np.stack([np.asarray(e, np.float32) for e in g["embedding"]])
    return out


def zeroshot_rows(specs: list, emb: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = [
        {"task": s.name, "class_index": i, "class_name": c, "prompts": json.dumps(p),
         "embedding": emb[s.name][i].astype(np.float32).tolist()}
        for s in specs
        for i, (c, p) in enumerate(zip(s.class_names, s.prompts, strict=True))
    ]  # fmt: skip
    return pd.DataFrame(rows)
