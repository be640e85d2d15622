"""The dashboard's five analyses: the math, on decompositions and stored per-head arrays.

Math on numpy arrays and torch tensors; touches no files, no model, and renders nothing
(the heatmap colours live in the dashboard). The dashboard gathers choices, calls these, renders.

1. Property neighbours: the heads carrying one property are combined and the store is ranked
   by cosine to the query image. Default combination, ``"concat"``: every head's contribution
   is unit-normalised and the normalised vectors are concatenated; the cosine of two such
   concatenations is exactly the mean of the per-head cosines, so nothing is materialised.
   ``"sum"`` adds the normalised contributions instead and takes the cosine of the sums.
2. Topic segmentation: per-patch maps (``decompose.patch_maps``) contracted with one text
   direction, summed over every chosen (layer, head).
3. Contrastive segmentation: the same with direction ``t1 - t2``; positive = more ``t1``.
4. Head image neighbours: per head, cosine between the query's and each stored image's
   contribution of that head.
5. Head text neighbours: per head, score = ``head_out · text`` (the head's direct contribution
   to the image-text similarity logit), ranked over the store.

Every stored head is held in its own coordinates (``HeadContributions``: ``[image, d_head]``
plus the head's orthonormal basis ``[d_head, d_embed]``); queries and texts are projected onto
the basis once, so each ranking costs image x d_head, not image x d_embed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

EPS = 1e-12
COMBINE_MODES = ("concat", "sum")


@dataclass(frozen=True)
class Ranking:
    """Top-k of a score vector: ``index [k]`` into the stored images, ``score [k]``, best first."""

    index: np.ndarray
    score: np.ndarray


@dataclass(frozen=True)
class HeadContributions:
    """One (layer, head)'s stored contributions in the head's own coordinates, ready for ranking.

    ``unit [image, d_head]``: unit rows of the coordinates as a float16 torch tensor (torch's CPU
    half matmul accumulates in float32); ``norm [image]`` float32; ``basis [d_head, d_embed]``
    float32 with orthonormal (or zero) rows, so ``unit * norm[:, None] @ basis`` is ``head_out``.
    A vector v of embedding space meets the head only through its projection ``basis @ v``:
    every dot product and norm below is taken in coordinates (d_head, not d_embed).
    """

    unit: torch.Tensor
    norm: np.ndarray
    basis: np.ndarray

    @classmethod
    def from_coords(cls, coord: np.ndarray, basis: np.ndarray) -> HeadContributions:
        """From stored ``coord [image, d_head]`` (any float dtype) and ``basis [d_head, d_embed]``."""
        n = coord.shape[0]
        unit = np.empty(coord.shape, dtype=np.float16)
        norm = np.empty(n, dtype=np.float32)
        step = 65536  # rows per block: float32 temporaries stay small for 1,000,000+ images
        for a in range(0, n, step):
            x = np.asarray(coord[a : a + step], dtype=np.float32)  # [block, d_head]
            norm[a : a + step] = np.linalg.norm(x, axis=-1)
            unit[a : a + step] = x / np.maximum(norm[a : a + step], EPS)[:, None]
        return cls(unit=torch.from_numpy(unit), norm=norm, basis=np.asarray(basis, np.float32))

    @classmethod
    def from_head_out(cls, head_out: np.ndarray) -> HeadContributions:
        """From contributions in embedding space ``[image, d_embed]`` (an orthonormal basis of
        their row space is found by SVD; for tests and data without a stored basis)."""
        x = np.asarray(head_out, dtype=np.float64)
        _, s, vh = np.linalg.svd(x, full_matrices=False)
        keep = s > 1e-6 * max(float(s[0]) if len(s) else 0.0, EPS)
        basis = vh[keep]  # [rank, d_embed]
        return cls.from_coords((x @ basis.T).astype(np.float32), basis)

    def __len__(self) -> int:
        return int(self.unit.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.unit.numel() * 2 + self.norm.nbytes + self.basis.nbytes)

    def project(self, v: np.ndarray) -> np.ndarray:
        """Embedding-space vector(s) ``[..., d_embed]`` -> coordinates ``[..., d_head]``."""
        return np.asarray(v, dtype=np.float32) @ self.basis.T

    def _dot_unit(self, c: np.ndarray) -> np.ndarray:
        """``unit @ c`` for coordinates ``c [d_head]`` -> ``[image]`` float32."""
        # scale into float16's comfortable range, multiply, undo the scale in float32
        c = np.asarray(c, dtype=np.float32)
        scale = float(max(np.abs(c).max(), EPS))
        q = torch.from_numpy((c / scale).astype(np.float16))
        return (self.unit @ q).float().numpy() * scale

    def cosine(self, query: np.ndarray) -> np.ndarray:
        """Cosine of ``query [d_embed]`` with every stored image's contribution -> ``[image]``."""
        q = np.asarray(query, dtype=np.float32)
        return self._dot_unit(self.project(q) / max(float(np.linalg.norm(q)), EPS))

    def dot(self, direction: np.ndarray) -> np.ndarray:
        """``head_out · direction`` for every stored image -> ``[image]``."""
        return self._dot_unit(self.project(direction)) * self.norm

    def coord_row(self, index: int) -> np.ndarray:
        """Stored coordinates of one image -> ``[d_head]`` float32."""
        return self.unit[int(index)].float().numpy() * self.norm[int(index)]

    def row(self, index: int) -> np.ndarray:
        """Stored ``head_out`` of one image -> ``[d_embed]`` float32."""
        return self.coord_row(index) @ self.basis


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero). ``[image, d_embed]`` -> same, float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, EPS)


def top_k(scores: np.ndarray, k: int, exclude: Sequence[int] = ()) -> Ranking:
    """The ``k`` highest of ``scores [image]``, best first, ties broken by lower index.

    ``exclude`` removes stored images from the ranking (e.g. the query itself when it was
    picked from the store). O(image) with ``argpartition``.
    """
    s = np.array(scores, dtype=np.float32)  # a copy: excluded entries are overwritten
    if s.ndim != 1:
        raise ValueError(f"scores must be [image], got shape {s.shape}")
    n_valid = len(s)
    if len(exclude):
        ex = np.unique(np.asarray(exclude, dtype=np.int64))
        s[ex] = -np.inf
        n_valid -= len(ex)
    k = max(0, min(int(k), n_valid))
    if k == 0:
        return Ranking(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
    part = np.argpartition(-s, k - 1)[:k] if k < len(s) else np.arange(len(s))
    # boundary ties: take every index whose score equals the k-th score, then the lowest indices
    kth = np.min(s[part])
    cand = np.flatnonzero(s >= kth)
    order = np.lexsort((cand, -s[cand]))[:k]  # primary: score desc, secondary: index asc
    idx = cand[order]
    return Ranking(idx.astype(np.int64), s[idx].astype(np.float32))


def head_image_neighbours(
    query: np.ndarray, banks: Sequence[HeadContributions], k: int = 8, exclude: Sequence[int] = ()
) -> list[Ranking]:
    """Per head, the ``k`` stored images whose contribution of that head is most cosine-similar
    to the query's.

    ``query [head, d_embed]`` (the chosen heads' contributions for the query image);
    ``banks``: one ``HeadContributions`` per chosen head, same order.
    """
    query = np.asarray(query, dtype=np.float32)
    if query.ndim != 2 or query.shape[0] != len(banks):
        raise ValueError(f"query must be [head, d_embed] with {len(banks)} heads")
    return [top_k(b.cosine(q), k, exclude) for q, b in zip(query, banks, strict=True)]


def property_scores(
    query: np.ndarray, banks: Sequence[HeadContributions], combine: str = "concat"
) -> np.ndarray:
    """Similarity of every stored image to the query over a set of heads combined -> ``[image]``.

    ``query [head, d_embed]``; ``banks``: one ``HeadContributions`` per head, same order.
    ``"concat"``: cosine of the concatenated unit-normalised contributions = mean over heads of
    the per-head cosines. ``"sum"``: cosine of the sums of unit-normalised contributions.
    """
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
    query = unit_rows(query)  # [head, d_embed]
    if query.shape[0] != len(banks) or not len(banks):
        raise ValueError(f"query must be [head, d_embed] with {len(banks)} (>0) heads")
    if combine == "concat":
        total = np.zeros(len(banks[0]), dtype=np.float32)
        for q, b in zip(query, banks, strict=True):
            total += b.cosine(q)
        return total / len(banks)
    return _sum_scores(query, banks)


def _sum_scores(query: np.ndarray, banks: Sequence[HeadContributions]) -> np.ndarray:
    """``"sum"`` in coordinates: cos(Σ_h q̂_h, Σ_h û_ih) with û_ih = unit_ih @ basis_h.

    Numerator Σ_h unit_ih · (basis_h Q), Q = Σ_h q̂_h. Squared norm of the stored sum:
    Σ_h |unit_ih|² + 2 Σ_{h<g} unit_ih (basis_h basis_gᵀ) unit_igᵀ — the heads' cross-Gram
    matrices ``[d_head, d_head]``; nothing of size ``[image, d_embed]`` is formed."""
    total_q = query.sum(axis=0)  # [d_embed]
    qn = max(float(np.linalg.norm(total_q)), EPS)
    n = len(banks[0])
    num = np.zeros(n, dtype=np.float32)
    sq = np.zeros(n, dtype=np.float32)
    pulled = [b.project(total_q) for b in banks]  # basis_h Q: [d_head] each
    grams = {
        (i, j): banks[i].basis @ banks[j].basis.T  # [d_head, d_head] cross-Gram
        for i in range(len(banks))
        for j in range(i + 1, len(banks))
    }
    step = 32768  # float32 blocks of [step, d_head] per head (BLAS, numpy)
    for a in range(0, n, step):
        units = [b.unit[a : a + step].numpy().astype(np.float32) for b in banks]
        for u, p in zip(units, pulled, strict=True):
            num[a : a + step] += u @ p
            sq[a : a + step] += np.einsum("ik,ik->i", u, u)
        for (i, j), g in grams.items():
            sq[a : a + step] += 2.0 * np.einsum("ik,ik->i", units[i] @ g, units[j])
    return num / (np.sqrt(np.maximum(sq, 0.0)) + EPS) / qn


def text_scores(stored: np.ndarray, text: np.ndarray) -> np.ndarray:
    """A head's direct contribution to each stored image's similarity with a text:
    ``stored [image, d_embed] · text [d_embed]`` -> ``[image]``."""
    return np.asarray(stored, dtype=np.float32) @ np.asarray(text, dtype=np.float32)


def contrast_direction(text_a: np.ndarray, text_b: np.ndarray) -> np.ndarray:
    """Direction ``text_a - text_b`` ``[d_embed]``: positive map values = more like ``text_a``."""
    return np.asarray(text_a, dtype=np.float32) - np.asarray(text_b, dtype=np.float32)


def aggregate_maps(maps: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Sum of per-head maps ``[layer, head, grid, grid]`` over every (layer, head) selected by
    ``mask [layer, head]`` (all when None) -> ``[grid, grid]``.

    Since each head's map sums to that head's contribution · direction, the aggregate sums to
    the chosen heads' total contribution · direction: it truly aggregates every chosen head.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 4:
        raise ValueError(f"maps must be [layer, head, grid, grid], got shape {maps.shape}")
    if mask is None:
        return maps.sum(axis=(0, 1))
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != maps.shape[:2]:
        raise ValueError(f"mask must be [layer, head] = {maps.shape[:2]}, got {mask.shape}")
    if not mask.any():
        raise ValueError("choose at least one head")
    return maps[mask].sum(axis=0)  # maps[mask]: [chosen head, grid, grid]


def symmetric_scale(values: np.ndarray) -> float:
    """Colour-scale half-range: max |value| (so 0 sits at the centre of a diverging scale)."""
    return float(max(np.max(np.abs(values)), EPS))


def upsample(grid_map: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of ``[grid, grid]`` to ``[size, size]`` (cell centres aligned)."""
    g = np.asarray(grid_map, dtype=np.float32)
    n = g.shape[0]
    # pixel centres in grid coordinates, clamped to the outer cell centres
    pos = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).astype(np.float32)
    rows = g[lo] * (1 - w)[:, None] + g[hi] * w[:, None]  # [size, grid]
    return rows[:, lo] * (1 - w)[None, :] + rows[:, hi] * w[None, :]  # [size, size]
