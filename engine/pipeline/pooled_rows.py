"""One batch of pixels -> a store's per-image rows, for an attention-pooled tower (SigLIP).

The same contract as `engine.pipeline.rows.BatchDecomposer` (constants once, rows per batch,
every batch checked against `encode_image` before anything is returned), with the pooled
decomposition of `engine.core.pooling`: every head's term through the frozen pool, in ONE
coordinate system shared by every head (the pool's output map orthonormalised once, d_coord =
its rank, d_embed for SigLIP: a per-head basis does not compress, docs/decomposition.md), the
per-image attention-bias term and the pool-MLP term as their own arrays, `std` = 1 (each token's
deviation is folded into every term through the pool) and `attn_bias` = 0 (`attn_bias_image`
holds that term). The stored terms then sum to the embedding as the schema states.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.core import pooling
from engine.model.timm_tower import capture_pooled, pooled_weights
from engine.pipeline.rows import RECONSTRUCTION_TOL, check_batch, f16


class PooledBatchDecomposer:
    """Per-batch pooled decomposition into store rows (one model, one choice of stored layers)."""

    pooled = True

    def __init__(self, lm, layers: list[int], *, weights=None, check: bool = True):
        self.lm = lm
        self.layers = sorted(int(l) for l in layers)
        self.weights = weights if weights is not None else pooled_weights(lm.model)
        self.bases = pooling.pooled_bases(self.weights, torch.float32, lm.device)
        self.check = check
        param_dtype = next(lm.model.visual.parameters()).dtype
        self.tolerance = RECONSTRUCTION_TOL.get(param_dtype, 1e-4)
        self.worst_error = 0.0

    @property
    def d_coord(self) -> int:
        """The width of every head's coordinates (the pool's output map's rank)."""
        return self.bases.width

    def constants(self) -> dict[str, np.ndarray]:
        """basis [1, 1, d_coord, d_embed] (shared), rank, attn_bias (zeros), ln_bias (the pool's
        constant term)."""
        b = self.bases
        n_heads, d_embed = self.weights.n_heads, int(b.basis.shape[1])
        return {
            "basis": b.basis.float().cpu().numpy()[None, None],
            "rank": np.full((len(self.layers), n_heads), b.width, np.int32),
            "attn_bias": np.zeros((len(self.layers), d_embed), np.float32),
            "ln_bias": b.pool_bias.float().cpu().numpy(),
        }

    @torch.no_grad()
    def decompose(self, pixels: torch.Tensor) -> pooling.PooledDecomposition:
        cap = capture_pooled(self.lm.model, pixels.to(self.lm.device), self.layers)
        return pooling.decompose_pooled(self.weights, cap, self.layers, bases=self.bases)

    @torch.no_grad()
    def rows(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        """pixels [image, 3, H, W] -> rows of coord, mlp, attn_rest, embed, attn_bias_image,
        pool_mlp, std (ones), output. Raises ReconstructionError as BatchDecomposer does."""
        dec = self.decompose(pixels)
        if self.check:
            check_batch(self, dec, "the pooled decomposition")
        n = dec.output.shape[0]
        return {
            "coord": f16(dec.coord),
            "mlp": f16(dec.mlp),
            "attn_rest": f16(dec.attn_rest),
            "embed": f16(dec.embed),
            "attn_bias_image": f16(dec.attn_bias),
            "pool_mlp": f16(dec.pool_mlp),
            "std": np.ones(n, np.float32),
            "output": dec.output.float().cpu().numpy(),
        }
