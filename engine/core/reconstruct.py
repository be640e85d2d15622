"""The stored decomposition summed back to the embedding, with its fp16 rounding bound (math only).

A store holds the per-image terms in fp16 (`coord`, `mlp`, `attn_rest`, `embed`) and the rest in
fp32. Rounding to fp16 changes each element by at most u = 2^-11 of itself (round to nearest;
below 2^-14, subnormals, by at most 2^-25 absolutely), so for one image with terms t:

    ||output - Σ stored terms||₂ <= u Σ_t ||t||₂ + 2^-25 √d_embed n_terms + ε (||output||₂ + Σ_t ||t||₂)

(for a head, ||δcoord @ basis|| = ||δcoord|| as the basis rows are orthonormal; ε = 1e-5, applied
to ||output|| + Σ_t ||t||, covers the fp32 decomposition itself — checked per batch at build
time, measured ~1e-7 — and the fp32 summation). `verify
--store` reports the largest ratio of the measured error to this bound (<= 1 means every image
is within fp16 rounding) and the relative error max |error| / max ||output||.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FP16_UNIT = 2.0**-11  # relative rounding error of fp16, round to nearest (normal numbers)
FP16_SUBNORMAL = 2.0**-25  # absolute rounding error of fp16 below 2^-14
FP32_SLACK = 1e-5  # the fp32 decomposition's own error, relative to ||output||


@dataclass(frozen=True)
class StoredSum:
    """One chunk of images: the sum of the stored terms and what bounds its error.

    total [image, d_embed]; error [image] = ||output - total||₂; bound [image] (module doc)."""

    total: np.ndarray
    error: np.ndarray
    bound: np.ndarray


def stored_sum(
    coord: np.ndarray,
    basis: np.ndarray,
    attn_bias: np.ndarray,
    std: np.ndarray,
    mlp: np.ndarray,
    attn_rest: np.ndarray,
    embed: np.ndarray,
    ln_bias: np.ndarray,
    output: np.ndarray,
    extra: tuple[np.ndarray, ...] = (),
) -> StoredSum:
    """Sum the stored terms of a chunk of images and bound the sum's fp16 rounding error.

    coord [image, layer, head, d_head]; basis [layer, head, d_head, d_embed]; attn_bias
    [layer, d_embed] (per image / std); std [image]; mlp [image, layer_all, d_embed];
    attn_rest [image, rest_layer, d_embed]; embed [image, d_embed]; ln_bias [d_embed];
    output [image, d_embed] (the model's own embedding); extra: further per-image fp16 terms,
    each [image, term, d_embed] or [image, d_embed] (a pooled store's attn_bias_image and
    pool_mlp). A basis [1, 1, d_coord, d_embed] is shared by every head: the coordinates are
    summed first (one product)."""
    n = coord.shape[0]
    d_embed = basis.shape[-1] if basis.size else output.shape[1]
    c = np.asarray(coord, np.float32)
    if basis.shape[:2] == (1, 1) and c.shape[1:3] != (1, 1):  # one shared basis
        total = c.sum(axis=(1, 2)) @ np.asarray(basis[0, 0], np.float32)
    else:
        flat = c.reshape(n, -1)  # [image, layer*head*d_head]
        total = flat @ np.asarray(basis, np.float32).reshape(flat.shape[1], d_embed)
    total += (
        np.asarray(attn_bias, np.float32).sum(axis=0)[None] / np.asarray(std, np.float32)[:, None]
    )
    m = np.asarray(mlp, np.float32)
    r = np.asarray(attn_rest, np.float32)
    e = np.asarray(embed, np.float32)
    total += m.sum(axis=1) + r.sum(axis=1) + e + np.asarray(ln_bias, np.float32)
    xs = [np.asarray(x, np.float32).reshape(n, -1, d_embed) for x in extra]  # [image, t, d_embed]
    for x in xs:
        total += x.sum(axis=1)
    out = np.asarray(output, np.float32)
    error = np.linalg.norm(out - total, axis=1)
    norms = (
        np.linalg.norm(c, axis=-1).sum(axis=(1, 2))
        + np.linalg.norm(m, axis=-1).sum(axis=1)
        + np.linalg.norm(r, axis=-1).sum(axis=1)
        + np.linalg.norm(e, axis=-1)
        + sum(np.linalg.norm(x, axis=-1).sum(axis=1) for x in xs)
    )
    n_terms = c.shape[1] * c.shape[2] + m.shape[1] + r.shape[1] + 1 + sum(x.shape[1] for x in xs)
    bound = (
        FP16_UNIT * norms
        + FP16_SUBNORMAL * np.sqrt(d_embed) * n_terms
        + FP32_SLACK * (np.linalg.norm(out, axis=1) + norms)
    )
    return StoredSum(total=total, error=error, bound=bound)
