"""What a session does differently for a store of an attention-pooled tower (SigLIP).

The query image's decomposition through the frozen pool (`engine.core.pooling`), per-patch
maps of every stored head (`pooled_patch_maps`: each head's per-token contributions weighted by
the pool's attention), the reference's per-pooling-head view (which pool head carries what) and
the pool-MLP term's share of the embedding read from the store (what no head's direct effect
explains: the dashboard says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.core import pooling
from engine.model.timm_tower import capture_pooled, pooled_weights
from engine.session.query import ImageAnalysis


def weights(lm) -> pooling.PooledWeights:
    """The tower's weights by state-dict name (`trunk.blocks.*`, `trunk.norm`, `attn_pool.*`)."""
    return pooled_weights(lm.model)


@torch.no_grad()
def analyse(lm, w: pooling.PooledWeights, pixels: torch.Tensor, layers: list[int]):
    """pixels [1, 3, H, W] -> (`ImageAnalysis`, the `PooledDecomposition`)."""
    cap = capture_pooled(lm.model, pixels, layers)
    dec = pooling.decompose_pooled(w, cap, layers)
    out = ImageAnalysis(
        head_out=dec.head_out[0].float().numpy(),  # [layer, head, d_embed]
        output=dec.output[0].float().numpy(),  # [d_embed]
        layers=list(dec.layers),
        capture=cap,
    )
    return out, dec


def maps(w: pooling.PooledWeights, cap, layers: list[int], direction: np.ndarray) -> np.ndarray:
    """Per-patch maps of every stored head along `direction [d_embed]` -> [layer, head, grid,
    grid]; each map sums exactly to the head's pooled term · direction (no class token)."""
    d = torch.from_numpy(np.ascontiguousarray(direction, dtype=np.float32).copy())
    return pooling.pooled_patch_maps(w, cap, 0, layers, None, d).numpy()


@dataclass(frozen=True)
class PoolHeadView:
    """The reference's per-pooling-head view of one image: the pooled vector split by pool head.

    contrib [pool_head, d_embed]: pool head g's part of the embedding (its pooled values through
    its slice of the pool's output projection); Σ_g contrib + proj_bias + pool_mlp = output.
    share [pool_head]: ||contrib[g]|| / Σ_g ||contrib||. text_scores [pool_head, text]: contrib ·
    unit text embedding (each pool head's direct share of the image-text logit), when texts
    were given. pool_mlp [d_embed]: the pool's MLP branch (not split by pool head)."""

    contrib: np.ndarray
    share: np.ndarray
    proj_bias: np.ndarray
    pool_mlp: np.ndarray
    output: np.ndarray
    texts: tuple[str, ...] = ()
    text_scores: np.ndarray | None = None


def pool_head_view(s, query, texts: Sequence[str] = ()) -> PoolHeadView:
    """The per-pooling-head view of `query` by the session's model (a pooled store only)."""
    dec = s.pooled_decomposition(query)
    contrib = dec.pool_heads[0].float().numpy()  # [pool_head, d_embed]
    norms = np.linalg.norm(contrib, axis=1)
    w = s.vision_weights()
    texts = tuple(str(t) for t in texts)
    scores = contrib @ s.text_embeddings(list(texts)).T if texts else None  # [pool_head, text]
    return PoolHeadView(
        contrib=contrib,
        share=norms / max(float(norms.sum()), 1e-30),
        proj_bias=w.pool_b_proj.float().numpy(),
        pool_mlp=dec.pool_mlp[0].float().numpy(),
        output=dec.output[0].float().numpy(),
        texts=texts,
        text_scores=scores,
    )


def pool_mlp_share(reader, max_images: int = 4096) -> dict:
    """||pool_mlp|| / ||output|| over the store's first `max_images` images: mean, median, max
    (None for a class-token store: it has no such term)."""
    if not reader.pooled:
        return {"mean": None, "median": None, "max": None, "n_images": 0}
    n = min(int(reader.info["n_images"]), max_images)
    mlp = np.asarray(reader.lazy("pool_mlp")[:n], np.float32)
    out = np.asarray(reader.lazy("output")[:n], np.float32)
    share = np.linalg.norm(mlp, axis=1) / np.maximum(np.linalg.norm(out, axis=1), 1e-30)
    return {"mean": float(share.mean()), "median": float(np.median(share)),
            "max": float(share.max()), "n_images": n}  # fmt: skip


def layer_maps(w: pooling.PooledWeights, cap, layer: int, directions: torch.Tensor):
    """`engine.core.units.layer_maps` for a pooled tower: per-patch maps of every head of one
    layer, each along its own direction [head, d_embed], for every image of a capture ->
    `(maps [image, head, grid*grid], cls [image, head])`; cls is zero (no class token: every
    token is a patch), and `maps.sum(-1)` is each head's pooled term · its direction."""
    n_image = cap.output.shape[0]
    b = pooling.pooled_bases(w, torch.float32, cap.resid.device)
    maps = torch.stack([
        torch.stack([
            pooling.pooled_patch_maps(w, cap, i, [layer], [h], directions[h], bases=b)[0, 0]
            for h in range(directions.shape[0])
        ])
        for i in range(n_image)
    ])  # [image, head, grid, grid]  # fmt: skip
    return maps.flatten(2), torch.zeros(n_image, directions.shape[0])
