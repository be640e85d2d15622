"""MLP neurons as units (the unit pages): extreme images along a neuron's direction, its
histograms, from what `interpret --neurons` keeps in memory (math only).

A neuron's effect on image i has frame coordinates k_i `[K]` (`engine.core.second_order`:
effect = k_i @ Q_n, Q_n orthonormal rows) and its unit direction is d = v @ Q_n with v `[K]` the
first principal direction of its top images' centred coordinates (`neuron_analysis`). So
`effect_i · d = k_i · v` (the **projection**), and centring shifts every image's projection by the
same μ·v. `NeuronStats` keeps, per neuron, the `T` images with the largest centred norm
‖k_i - μ‖ and their centred coordinates; any other image j has |(k_j - μ)·v| ≤ ‖k_j - μ‖ ≤
threshold (the T-th largest norm). Hence the k highest projections of the kept set are the
store's top-k whenever the k-th of them is ≥ the threshold (the bottom-k: the k-th lowest ≤ minus
it), or when the kept set is every image (`exact_top`, `exact_bottom`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.core.units import Histogram, histogram

N_NORM_BINS = 64  # bins of the streamed norm histogram before trailing empty ones are dropped


@dataclass(frozen=True)
class NeuronUnits:
    """Every neuron of one layer summarised as a unit (arrays indexed by neuron first).

    top / bottom: image ids `[neuron, k]` (highest, resp. lowest projection first, ties: lower
    image first); top_proj / bottom_proj: their projections `effect · d` `[neuron, k]`;
    exact_top / exact_bottom: `[neuron]` bool, see the module doc; explained: `[neuron]` share of
    the kept images' centred variance along v; mean_proj: `[neuron]` μ·v; proj_hist: one
    `Histogram` of the kept images' projections per neuron; n_kept: T."""

    top: np.ndarray
    top_proj: np.ndarray
    bottom: np.ndarray
    bottom_proj: np.ndarray
    exact_top: np.ndarray
    exact_bottom: np.ndarray
    explained: np.ndarray
    mean_proj: np.ndarray
    proj_hist: list
    n_kept: int

    @property
    def n_neurons(self) -> int:
        return int(self.top.shape[0])


def summarise_neurons(
    top_k: np.ndarray,
    top_image: np.ndarray,
    threshold: np.ndarray,
    mean: np.ndarray,
    v: np.ndarray,
    k: int,
    n_images: int,
    n_bins: int = 32,
) -> NeuronUnits:
    """top_k: `[T, neuron, K]` centred coordinates of each neuron's kept images; top_image:
    `[T, neuron]` their ids; threshold: `[neuron]` the T-th largest centred norm; mean: `[neuron,
    K]` μ; v: `[neuron, K]` unit frame directions; n_images: the store's image count."""
    x = np.asarray(top_k, np.float64)  # [T, neuron, K]
    n_kept = x.shape[0]
    k = max(1, min(int(k), n_kept))
    p = np.einsum("tnk,nk->nt", x, np.asarray(v, np.float64))  # centred projections [neuron, T]
    mu_v = np.einsum("nk,nk->n", np.asarray(mean, np.float64), np.asarray(v, np.float64))
    ids = np.asarray(top_image).T  # [neuron, T]
    desc = np.lexsort((ids, -p), axis=-1)[:, :k]  # highest first, ties: lower image
    asc = np.lexsort((ids, p), axis=-1)[:, :k]  # lowest first
    rows = np.arange(p.shape[0])[:, None]
    thr = np.asarray(threshold, np.float64)
    everything = n_kept >= int(n_images)
    exact_top = everything | (p[rows[:, 0], desc[:, -1]] >= thr)
    exact_bottom = everything | (p[rows[:, 0], asc[:, -1]] <= -thr)
    sq = (x * x).sum(axis=(0, 2))  # [neuron]
    explained = np.where(sq > 0, (p * p).sum(axis=1) / np.maximum(sq, 1e-300), 0.0)
    proj = p + mu_v[:, None]  # uncentred: effect · d
    return NeuronUnits(
        top=ids[rows, desc], top_proj=proj[rows, desc],
        bottom=ids[rows, asc], bottom_proj=proj[rows, asc],
        exact_top=exact_top, exact_bottom=exact_bottom, explained=explained, mean_proj=mu_v,
        proj_hist=[histogram(proj[n], n_bins) for n in range(p.shape[0])], n_kept=n_kept,
    )  # fmt: skip


class StreamingHistogram:
    """Per-neuron equal-width histograms of non-negative values streamed in chunks, exact.

    Bins are [b·w, (b+1)·w) from 0; w is set by the first chunk's maximum and doubled (adjacent
    bins merged, which is exact) whenever a larger value arrives, so the range ends within a
    factor 2 of the maximum without knowing it in advance."""

    def __init__(self, n_neurons: int, n_bins: int = N_NORM_BINS):
        if n_bins < 2 or n_bins & (n_bins - 1):
            raise ValueError("n_bins must be a power of two >= 2")
        self.n_bins = n_bins
        self.counts = torch.zeros(n_neurons, n_bins, dtype=torch.int64)
        self.width = torch.zeros(n_neurons, dtype=torch.float64)

    def update(self, values: torch.Tensor) -> None:
        """values: `[image, neuron]` (>= 0)."""
        x = values.detach().to(torch.float64)
        if x.numel() == 0:
            return
        m = x.max(dim=0).values  # [neuron]
        new = self.width == 0
        if bool(new.any()):
            self.width[new] = torch.clamp(m[new], min=1e-30) * (1 + 1e-9) / self.n_bins
        span = self.width * self.n_bins
        grow = m >= span
        if bool(grow.any()):
            d = torch.ceil(torch.log2(m[grow] / span[grow]) + 1e-12).clamp(min=1).long()
            d = torch.where(m[grow] >= span[grow] * 2.0**d, d + 1, d)  # the boundary case
            idx = grow.nonzero()[:, 0]
            for j, dj in zip(idx.tolist(), d.tolist(), strict=True):
                f = 2**dj
                c = self.counts[j]
                if f >= self.n_bins:
                    merged = torch.zeros_like(c)
                    merged[0] = c.sum()
                else:
                    merged = torch.zeros_like(c)
                    merged[: self.n_bins // f] = c.reshape(-1, f).sum(dim=1)
                self.counts[j] = merged
                self.width[j] *= f
        b = torch.floor(x / self.width[None]).clamp(0, self.n_bins - 1).long()  # [image, neuron]
        flat = b + torch.arange(x.shape[1])[None] * self.n_bins
        self.counts += torch.bincount(flat.reshape(-1), minlength=self.counts.numel()).reshape(
            self.counts.shape
        )

    def histogram(self, neuron: int) -> Histogram:
        """One neuron's histogram, trailing empty bins dropped."""
        c = self.counts[neuron].numpy()
        nz = np.flatnonzero(c)
        last = int(nz[-1]) + 1 if nz.size else 1
        w = float(self.width[neuron]) or 1.0
        return Histogram(c[:last].astype(np.int64), w * np.arange(last + 1, dtype=np.float64))
