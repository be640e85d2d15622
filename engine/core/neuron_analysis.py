"""Neurons' second-order effects described: significance, main direction, sparse text (math only).

Inputs are the stored frame coordinates k `[image, neuron, K]` of one neuron layer
(`engine.core.second_order`: effect = k @ Q_n, ‖effect‖ = ‖k‖), streamed in image chunks:

1. `NeuronStats.update_mean` over every chunk, then `NeuronStats.update_top` over every chunk:
   effects are centred per neuron (mean over the collection); each image's centred norm; the
   `top` images with the largest centred norm kept per neuron with their centred k; the sum of
   squares (for η²) and per-factor group sums.
2. `directions`: the first right singular vector of each neuron's top images' centred k, its sign
   set so that most of them project positively (the reference's rule), mapped to d_embed by Q_n.
3. `sparse_text`: orthogonal matching pursuit (scikit-learn) of each unit direction over the
   text bank. Dictionary: bank embeddings, mean-removed, then each *text* normalised to unit
   norm. OMP picks atoms by |correlation| with the residual, which is only a correlation when
   atoms have unit norm; the reference instead normalises each embedding *dimension* across
   texts, which changes the geometry the direction lives in and lets long atoms win. Our
   coefficients are therefore in embedding units along unit text directions.

Significance: a neuron's effect on an image is significant when its centred norm exceeds the
neuron's `top`-th largest (the paper's 100th, ~top 2 % of its images).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TOP_IMAGES = 100
N_WORDS = 32  # the reference's default
GRAM_MAX_TEXTS = 8192


@dataclass
class NeuronStats:
    """Running statistics of one neuron layer over image chunks (two passes).

    n_neurons, n_paths (K), top: sizes; factor_codes: optional [factor][image] ints (η²)."""

    n_neurons: int
    n_paths: int
    top: int = TOP_IMAGES
    n_factor_values: list[int] = field(default_factory=list)
    n: int = 0
    sum_k: np.ndarray | None = None  # [neuron, K] float64
    group_sum: list[np.ndarray] = field(default_factory=list)  # per factor [value, neuron, K]
    group_n: list[np.ndarray] = field(default_factory=list)  # per factor [value]
    top_norm: np.ndarray | None = None  # [top, neuron] descending after finish
    top_image: np.ndarray | None = None  # [top, neuron] int
    top_k: np.ndarray | None = None  # [top, neuron, K] centred
    sum_norm: np.ndarray | None = None  # [neuron]
    sum_sq: np.ndarray | None = None  # [neuron] Σ ‖k - mean‖²

    def __post_init__(self):
        self.sum_k = np.zeros((self.n_neurons, self.n_paths))
        self.group_sum = [np.zeros((g, self.n_neurons, self.n_paths)) for g in self.n_factor_values]
        self.group_n = [np.zeros(g) for g in self.n_factor_values]
        self.sum_norm = np.zeros(self.n_neurons)
        self.sum_sq = np.zeros(self.n_neurons)

    def update_mean(self, k: np.ndarray, codes: list[np.ndarray] | None = None) -> None:
        """Pass 1. k: [image, neuron, K] of one chunk; codes: per factor [image] ints (<0: none)."""
        self.n += k.shape[0]
        self.sum_k += k.sum(axis=0, dtype=np.float64)
        for f, c in enumerate(codes or []):
            for v in range(self.n_factor_values[f]):
                sel = c == v
                if sel.any():
                    self.group_sum[f][v] += k[sel].sum(axis=0, dtype=np.float64)
                    self.group_n[f][v] += sel.sum()

    @property
    def mean(self) -> np.ndarray:
        """[neuron, K] mean effect coordinates over the collection."""
        return self.sum_k / max(self.n, 1)

    def update_top(self, k: np.ndarray, start: int) -> np.ndarray:
        """Pass 2 over the chunk of images start..start+len(k): returns its centred norms
        [image, neuron] and keeps the running top images per neuron."""
        centred = k - self.mean.astype(np.float32)[None]  # [image, neuron, K]
        norms = np.sqrt(np.einsum("ink,ink->in", centred, centred))  # [image, neuron]
        self.sum_norm += norms.sum(axis=0, dtype=np.float64)
        self.sum_sq += (norms.astype(np.float64) ** 2).sum(axis=0)
        ids = np.arange(start, start + k.shape[0])
        if self.top_norm is None:
            cand_norm, cand_img = norms, np.broadcast_to(ids[:, None], norms.shape)
            cand_k = centred
        else:
            cand_norm = np.concatenate([self.top_norm, norms])
            cand_img = np.concatenate([self.top_image, np.broadcast_to(ids[:, None], norms.shape)])
            cand_k = np.concatenate([self.top_k, centred])
        t = min(self.top, cand_norm.shape[0])
        if cand_norm.shape[0] > t:
            pick = np.argpartition(-cand_norm, t - 1, axis=0)[:t]  # [t, neuron]
        else:
            pick = np.broadcast_to(np.arange(t)[:, None], cand_norm.shape)
        cols = np.arange(self.n_neurons)[None]
        self.top_norm = cand_norm[pick, cols]
        self.top_image = np.asarray(cand_img)[pick, cols]
        self.top_k = cand_k[pick, cols]  # [t, neuron, K]
        return norms

    def finish(self) -> None:
        """Sort each neuron's top images by descending norm."""
        order = np.argsort(-self.top_norm, axis=0, kind="stable")
        cols = np.arange(self.n_neurons)[None]
        self.top_norm = self.top_norm[order, cols]
        self.top_image = self.top_image[order, cols]
        self.top_k = self.top_k[order, cols]

    @property
    def threshold(self) -> np.ndarray:
        """[neuron] the top-th largest centred norm: above it an effect is significant."""
        return self.top_norm[-1]

    @property
    def mean_norm(self) -> np.ndarray:
        """[neuron] mean centred effect norm over the collection."""
        return self.sum_norm / max(self.n, 1)

    def eta2(self) -> np.ndarray:
        """[factor, neuron] η² = between-group / total sum of squares of the effect (images whose
        factor is undefined count in the total only)."""
        out = np.zeros((len(self.group_sum), self.n_neurons))
        mu = self.mean
        for f, (gs, gn) in enumerate(zip(self.group_sum, self.group_n, strict=True)):
            between = np.zeros(self.n_neurons)
            for v in range(len(gn)):
                if gn[v] > 0:
                    d = gs[v] / gn[v] - mu  # [neuron, K]
                    between += gn[v] * (d * d).sum(axis=1)
            out[f] = between / np.maximum(self.sum_sq, 1e-30)
        return out


def principal_directions(top_k: np.ndarray) -> np.ndarray:
    """First right singular vector of each neuron's top centred coordinates, sign fixed so that
    most top images project positively (ties: the positive sum). top_k: [top, neuron, K] ->
    [neuron, K] unit vectors (frame coordinates)."""
    x = np.ascontiguousarray(top_k.transpose(1, 0, 2)).astype(np.float64)  # [neuron, top, K]
    _, _, vh = np.linalg.svd(x, full_matrices=False)
    v = vh[:, 0]  # [neuron, K]
    proj = np.einsum("ntk,nk->nt", x, v)
    pos = (proj > 0).sum(axis=1)
    neg = (proj < 0).sum(axis=1)
    flip = (neg > pos) | ((neg == pos) & (proj.sum(axis=1) < 0))
    v[flip] *= -1
    return v


def text_dictionary(emb: np.ndarray) -> np.ndarray:
    """Bank embeddings [text, d_embed] -> OMP atoms: mean over texts removed, each text
    normalised to unit norm. [text, d_embed] float64."""
    d = emb.astype(np.float64) - emb.mean(axis=0, keepdims=True)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)


def sparse_text(directions: np.ndarray, atoms: np.ndarray, n_words: int) -> np.ndarray:
    """OMP codes of unit `directions` [neuron, d_embed] over `atoms` [text, d_embed]:
    [neuron, text] with at most `n_words` non-zeros per neuron (scikit-learn's
    `orthogonal_mp_gram`, the Gram matrix computed once for every neuron)."""
    from sklearn.linear_model import orthogonal_mp, orthogonal_mp_gram

    n_words = max(1, min(int(n_words), atoms.shape[0], atoms.shape[1]))
    if atoms.shape[0] > GRAM_MAX_TEXTS:  # a [text, text] Gram would not fit: no precompute
        coef = orthogonal_mp(atoms.T, directions.T.astype(np.float64), n_nonzero_coefs=n_words)
        return np.asarray(coef).reshape(atoms.shape[0], -1).T
    gram = atoms @ atoms.T  # [text, text]
    xy = atoms @ directions.T.astype(np.float64)  # [text, neuron]
    coef = orthogonal_mp_gram(gram, xy, n_nonzero_coefs=n_words, copy_Gram=False, copy_Xy=False)
    return np.asarray(coef).reshape(atoms.shape[0], -1).T  # [neuron, text]
