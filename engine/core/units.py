"""Per-unit summaries for the unit pages: principal direction, extreme images, histograms (math only).

For one head with stored coordinates X `[image, d_head]` (so `head_out = X @ basis`, basis
orthonormal rows), the head's **first principal direction** is the top eigenvector v `[d_head]` of
the centred covariance of X; in embedding space it is `v @ basis` `[d_embed]` (a unit vector,
since the basis rows are orthonormal). Its sign is fixed so that the mean contribution projects
non-negatively on it (for a centred head: the largest-magnitude entry of v is positive), so "top"
means the images that push the embedding furthest along the direction the head usually writes.

The **projection** of image i is `head_out[i] · (v @ basis) = X[i] · v` (uncentred); the top-k
images are the k largest projections, the bottom-k the k smallest (ties: lower image index
first). Histograms use `N_BINS` equal-width bins over the head's own range of each quantity
(the contribution norm `‖head_out[i]‖ = ‖X[i]‖`, and the projection). The head's **share of
embedding variance** is its total variance over images (trace of the covariance of head_out)
divided by the embedding's total variance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.core.analysis import top_k
from engine.core.textspan import head_moments

DEFAULT_K = 16
N_BINS = 32
EPS = 1e-12


@dataclass(frozen=True)
class Histogram:
    """Counts `[bin]` over equal-width bins with edges `[bin + 1]` (the last bin is closed)."""

    counts: np.ndarray
    edges: np.ndarray


@dataclass(frozen=True)
class UnitSummary:
    """One head's summary over the stored images.

    direction: `[d_head]` unit principal direction in the head's coordinates;
    explained: share of the head's variance along it; total_var: the head's total variance;
    top / bottom: image indices `[k]` (best first: highest, resp. lowest projection first);
    top_proj / bottom_proj: their projections `[k]`; norm_hist / proj_hist: histograms.
    """

    direction: np.ndarray
    explained: float
    total_var: float
    mean_proj: float
    top: np.ndarray
    top_proj: np.ndarray
    bottom: np.ndarray
    bottom_proj: np.ndarray
    norm_hist: Histogram
    proj_hist: Histogram

    def embed_direction(self, basis: np.ndarray) -> np.ndarray:
        """The direction in embedding space: `direction @ basis` `[d_embed]` (basis `[d_head, d_embed]`)."""
        return (np.asarray(self.direction, np.float64) @ np.asarray(basis, np.float64)).astype(
            np.float32
        )


def principal_direction(mu: np.ndarray, gram_c: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """First principal direction `[d]` and its share of the variance from a head's moments
    (`textspan.head_moments`: mean `[d]`, centred Gram `[d, d]`, image count). Sign fixed as in
    the module doc. A head with no variance gets its first axis and share 0."""
    d = gram_c.shape[0]
    total = float(np.trace(gram_c))
    if d == 0:
        return np.zeros(0), 0.0
    if not np.isfinite(total) or total <= 0.0 or n < 1:
        v = np.zeros(d)
        v[0] = 1.0
        return v, 0.0
    evals, evecs = np.linalg.eigh(gram_c)  # ascending
    v = evecs[:, -1].copy()  # [d]
    m = float(mu @ v)
    scale = float(np.sqrt(max(evals[-1], 0.0) / n))  # the standard deviation along v
    if abs(m) > 1e-6 * max(scale, EPS):
        sign = 1.0 if m > 0 else -1.0
    else:
        sign = 1.0 if v[int(np.argmax(np.abs(v)))] > 0 else -1.0
    return sign * v, float(max(evals[-1], 0.0) / total)


def histogram(values: np.ndarray, n_bins: int = N_BINS) -> Histogram:
    """Equal-width histogram of `values [image]` over their own range (a constant gets a unit-wide
    bin range around it)."""
    x = np.asarray(values, dtype=np.float64)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(x, bins=n_bins, range=(lo, hi))
    return Histogram(counts.astype(np.int64), edges)


def bottom_k(scores: np.ndarray, k: int):
    """The k lowest of `scores [image]`, lowest first, ties by lower index (`top_k` of −scores)."""
    r = top_k(-np.asarray(scores, dtype=np.float32), k)
    return r.index, -r.score


def summarise_head(
    coord: np.ndarray, k: int = DEFAULT_K, n_bins: int = N_BINS, moments=None
) -> UnitSummary:
    """Summary of one head from its stored coordinates `coord [image, d_head]` (float32).

    One Gram matrix `[d_head, d_head]` (image x d_head² flops; pass `moments` =
    `textspan.head_moments(coord)` when TextSpan already computed it), one projection and one norm
    per image, two O(image) selections and two histograms: a few passes over data in memory.
    """
    c = np.asarray(coord)
    if c.ndim != 2 or c.shape[0] < 1:
        raise ValueError(f"coord must be [image, d_head] with at least one image, got {c.shape}")
    if c.dtype not in (np.float32, np.float64):
        c = c.astype(np.float32)
    mu, gram_c, n = moments if moments is not None else head_moments(c)  # [d], [d, d], image
    v, explained = principal_direction(mu, gram_c, n)
    proj = c @ v.astype(c.dtype)  # [image]: head_out · direction
    norm = np.sqrt(np.einsum("ik,ik->i", c, c))  # [image]
    top = top_k(proj, k)
    b_idx, b_proj = bottom_k(proj, k)
    return UnitSummary(
        direction=v.astype(np.float32),
        explained=explained,
        total_var=float(np.trace(gram_c)) / n,
        mean_proj=float(mu @ v),
        top=top.index,
        top_proj=top.score,
        bottom=b_idx,
        bottom_proj=b_proj,
        norm_hist=histogram(norm, n_bins),
        proj_hist=histogram(proj, n_bins),
    )


def total_variance(chunks) -> float:
    """Total variance (trace of the covariance over images) of rows streamed in chunks
    `[image, d]`, in fp64 with a shifted (first-chunk mean) accumulator against cancellation."""
    n, shift, s1, s2 = 0, None, None, 0.0
    for x in chunks:
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            continue
        if shift is None:
            shift = x.mean(axis=0)
            s1 = np.zeros_like(shift)
        y = x - shift
        n += y.shape[0]
        s1 += y.sum(axis=0)
        s2 += float((y * y).sum())
    if n == 0:
        return 0.0
    return max(s2 / n - float(s1 @ s1) / n**2, 0.0)


def related(directions: np.ndarray, i: int, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The `n` units whose directions `[unit, d_embed]` are most aligned with unit i's, by
    |cosine| (a principal direction's sign is a convention), excluding i: (indices, cosines)."""
    d = np.asarray(directions, dtype=np.float64)
    unit = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), EPS)
    cos = unit @ unit[i]  # [unit]
    key = np.abs(cos)
    key[i] = -np.inf
    r = top_k(key.astype(np.float32), n)
    return r.index, cos[r.index]


def layer_maps(w, cap, layer: int, directions):
    """Per-patch maps of every head of one layer, each along its own direction, for every image
    of a capture: `(maps [image, head, grid*grid], cls [image, head])`, torch float32.

    directions: `[head, d_embed]` (torch). Row-major patch order; `maps.sum(-1) + cls` is each
    head's `head_out · direction`. The batched form of `decompose.patch_maps`: each direction is
    pulled back through P, out_proj and the value projection once (`[head, d_model]`), then one
    matmul over every image's tokens.
    """
    import torch

    from engine.core.decompose import _pattern, head_projection, ln_projection

    with torch.no_grad():
        d_model = w.d_model
        d_head = d_model // w.n_heads
        x = cap.attn_in[layer].to(torch.float32)  # [image, token, d_model]
        P = ln_projection(w, torch.float32).to(x.device)  # [d_model, d_embed]
        std = (cap.resid.to(torch.float32).var(dim=-1, unbiased=False) + w.ln_post_eps).sqrt()
        u = directions.to(torch.float32).to(x.device)  # [head, d_embed]
        wu = torch.einsum("hde,he->hd", head_projection(w, layer, P), u)  # [head, d_head]
        w_v = w.w_in[layer].to(torch.float32)[2 * d_model :].reshape(w.n_heads, d_head, d_model)
        b_v = w.b_in[layer].to(torch.float32)[2 * d_model :].reshape(w.n_heads, d_head)
        g = torch.einsum("hd,hdm->hm", wu, w_v)  # pulled-back directions: [head, d_model]
        value_dot = x @ g.T + (b_v * wu).sum(dim=-1)  # [image, token, head]
        pattern = _pattern(w, layer, x)  # [image, head, token]
        per_token = pattern * value_dot.transpose(1, 2) / std[:, None, None]  # [image, head, token]
        return per_token[:, :, 1:], per_token[:, :, 0]
