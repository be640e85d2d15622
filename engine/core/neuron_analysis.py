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
import torch

TOP_IMAGES = 100
N_WORDS = 32  # the reference's default
GRAM_MAX_TEXTS = 16384  # batched_omp keeps the bank's [text, text] Gram (fp32) up to this size


@dataclass
class NeuronStats:
    """Running statistics of one neuron layer over image chunks (two passes), on the stored form:
    q [image, K, neuron] int8 and scale [image, neuron] (k = q * scale, see
    `second_order.quantise`), in torch for its threads.

    n_neurons, n_paths (K), top: sizes; n_factor_values: values per factor (η²)."""

    n_neurons: int
    n_paths: int
    top: int = TOP_IMAGES
    n_factor_values: list[int] = field(default_factory=list)
    n: int = 0

    def __post_init__(self):
        t, nn, k = self.top, self.n_neurons, self.n_paths
        self.sum_k = torch.zeros(k, nn, dtype=torch.float64)  # [K, neuron]
        self.group_sum = [torch.zeros(g, k, nn, dtype=torch.float64) for g in self.n_factor_values]
        self.group_n = [np.zeros(g) for g in self.n_factor_values]
        self.sum_norm = torch.zeros(nn, dtype=torch.float64)
        self.sum_sq = torch.zeros(nn, dtype=torch.float64)  # Σ ‖k - mean‖²
        self.top_norm = torch.full((t, nn), -torch.inf)  # [top, neuron]
        self.top_image = torch.full((t, nn), -1, dtype=torch.long)
        self.top_k = torch.zeros(t, nn, k)  # [top, neuron, K] centred

    @staticmethod
    def _k(q: np.ndarray, scale: np.ndarray) -> torch.Tensor:
        """[image, K, neuron] float32 effect coordinates."""
        qf = torch.from_numpy(np.ascontiguousarray(q)).float()
        return qf * torch.from_numpy(scale.astype(np.float32))[:, None, :]

    def update_mean(self, q: np.ndarray, scale: np.ndarray, codes=None) -> None:
        """Pass 1 over one chunk; codes: per factor [image] ints (<0: undefined)."""
        k = self._k(q, scale)
        self.n += k.shape[0]
        self.sum_k += k.sum(dim=0).double()
        for f, c in enumerate(codes or []):
            for v in range(self.n_factor_values[f]):
                sel = torch.from_numpy(np.asarray(c) == v)
                if bool(sel.any()):
                    self.group_sum[f][v] += k[sel].sum(dim=0).double()
                    self.group_n[f][v] += int(sel.sum())

    @property
    def mean(self) -> np.ndarray:
        """[neuron, K] mean effect coordinates over the collection."""
        return (self.sum_k / max(self.n, 1)).T.numpy()

    def update_top(self, q: np.ndarray, scale: np.ndarray, start: int) -> torch.Tensor:
        """Pass 2 over the chunk of images start..: centred norms, running top images. Returns
        the chunk's centred norms `[image, neuron]` (the unit pages' norm histogram)."""
        mu = (self.sum_k / max(self.n, 1)).float()  # [K, neuron]
        qf = torch.from_numpy(np.ascontiguousarray(q)).float()
        s = torch.from_numpy(scale.astype(np.float32))[:, None, :]
        centred = torch.addcmul(-mu[None], qf, s)  # q * scale - mean: [image, K, neuron]
        norms = torch.linalg.vector_norm(centred, dim=1)  # [image, neuron]
        self.sum_norm += norms.sum(dim=0).double()
        self.sum_sq += norms.double().pow(2).sum(dim=0)
        better = norms > self.top_norm[-1][None]  # can enter the neuron's top: [image, neuron]
        n_better = better.sum(dim=0)
        aff = n_better.nonzero()[:, 0]  # neurons whose top changes
        if len(aff) == 0:
            return norms
        m = int(n_better.max())  # at most m of this chunk's images enter any top
        cand = torch.where(better[:, aff], norms[:, aff], -torch.inf)  # [image, aff]
        c_norm, c_row = cand.topk(m, dim=0)  # [m, aff]
        cols = torch.arange(len(aff))[None]
        c_k = centred[c_row, :, aff[None].expand(m, -1)]  # [m, aff, K]
        cand_norm = torch.cat([self.top_norm[:, aff], c_norm])  # [top + m, aff]
        cand_img = torch.cat([self.top_image[:, aff], c_row + start])
        cand_k = torch.cat([self.top_k[:, aff], c_k])
        val, pick = cand_norm.topk(self.top, dim=0)  # [top, aff], descending
        self.top_norm[:, aff] = val
        self.top_image[:, aff] = cand_img[pick, cols]
        self.top_k[:, aff] = cand_k[pick, cols]
        return norms

    def finish(self) -> None:
        """Sorted already (topk); kept for the two-pass protocol."""

    @property
    def threshold(self) -> np.ndarray:
        """[neuron] the top-th largest centred norm: above it an effect is significant."""
        return self.top_norm[-1].numpy()

    @property
    def mean_norm(self) -> np.ndarray:
        """[neuron] mean centred effect norm over the collection."""
        return (self.sum_norm / max(self.n, 1)).numpy()

    def eta2(self) -> np.ndarray:
        """[factor, neuron] η² = between-group / total sum of squares of the effect (images whose
        factor is undefined count in the total only)."""
        out = np.zeros((len(self.group_sum), self.n_neurons))
        mu = self.sum_k / max(self.n, 1)  # [K, neuron]
        total = self.sum_sq.numpy()
        for f, (gs, gn) in enumerate(zip(self.group_sum, self.group_n, strict=True)):
            between = np.zeros(self.n_neurons)
            for v in range(len(gn)):
                if gn[v] > 0:
                    d = (gs[v] / gn[v] - mu).numpy()  # [K, neuron]
                    between += gn[v] * (d * d).sum(axis=0)
            out[f] = between / np.maximum(total, 1e-30)
        return out


def principal_directions(top_k) -> np.ndarray:
    """First right singular vector of each neuron's top centred coordinates, sign fixed so that
    most top images project positively (ties: the positive sum). top_k: [top, neuron, K] ->
    [neuron, K] unit vectors (frame coordinates)."""
    top_k = np.asarray(top_k)
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
    [neuron, text] with at most `n_words` non-zeros per neuron (`batched_omp`)."""
    n_words = max(1, min(int(n_words), atoms.shape[0], atoms.shape[1]))
    a = torch.from_numpy(np.asarray(atoms, dtype=np.float64))
    y = torch.from_numpy(np.asarray(directions, dtype=np.float64))
    return batched_omp(a, y, n_words).numpy()


@torch.no_grad()
def batched_omp(atoms: torch.Tensor, y: torch.Tensor, n_nonzero: int, block: int = 512):
    """Orthogonal matching pursuit vectorised over targets: the algorithm of scikit-learn's
    `orthogonal_mp` / `orthogonal_mp_gram` (tested equal to it), whose per-target loop copies the
    whole [text, text] Gram for every target (80 ms per neuron for a 3.6k-text bank).

    atoms: [text, d]; y: [target, d] -> coef [target, text]. Each step picks the atom of largest
    |correlation with the residual|, then refits the chosen atoms by least squares (Cholesky of
    their Gram, grown by one row per step); residual correlations are one [target, d] @ [d, text]
    matmul per step."""
    n_t, n_text = y.shape[0], atoms.shape[0]
    out = torch.zeros(n_t, n_text, dtype=atoms.dtype)
    tiny = torch.finfo(atoms.dtype).tiny
    a32 = atoms.float()
    # residual correlations xy - γ · G[S, :]: from the Gram's chosen rows (one gathered row per
    # step) when the [text, text] Gram fits, else through d (one matmul per step)
    gram = (a32 @ a32.T) if n_text <= GRAM_MAX_TEXTS else None
    for b0 in range(0, n_t, block):
        yb = y[b0 : b0 + block]  # [B, d]
        nb = yb.shape[0]
        rows = torch.arange(nb)
        xy = yb @ atoms.T  # [B, text]
        xy32 = xy.float()
        chosen = torch.zeros(nb, 0, dtype=torch.long)
        L = torch.zeros(nb, n_nonzero, n_nonzero, dtype=atoms.dtype)
        gs = None if gram is None else torch.empty(nb, n_nonzero, n_text)  # G[S, :]
        alive = torch.ones(nb, dtype=torch.bool)
        alpha = xy.float()
        gamma = torch.zeros(nb, 0, dtype=atoms.dtype)
        for s in range(n_nonzero):
            a = alpha.abs()
            if s:
                a[rows[:, None], chosen] = -1.0  # never the same atom twice
            lam = a.argmax(dim=1)  # [B]
            alive &= alpha[rows, lam].double() ** 2 >= tiny
            a_lam = atoms[lam]  # [B, d]
            g_ll = (a_lam * a_lam).sum(dim=1)
            if s:
                g = torch.bmm(atoms[chosen], a_lam[:, :, None])  # G[S, lam]: [B, s, 1]
                w = torch.linalg.solve_triangular(L[:, :s, :s], g, upper=False)[..., 0]
                lkk = g_ll - (w * w).sum(dim=1)
                alive &= lkk > tiny  # dependent atoms: stop that target here
                L[:, s, :s] = w
                L[:, s, s] = lkk.clamp_min(tiny).sqrt()
            else:
                L[:, 0, 0] = g_ll.sqrt()
            new = torch.cat([chosen, lam[:, None]], dim=1)
            rhs = xy[rows[:, None], new][..., None]  # [B, s+1, 1]
            g_new = torch.cholesky_solve(rhs, L[:, : s + 1, : s + 1], upper=False)[..., 0]
            old = torch.cat([gamma, gamma.new_zeros(nb, 1)], 1)
            gamma = torch.where(alive[:, None], g_new, old)
            chosen = new
            if gs is not None:
                gs[:, s] = gram[lam]
                beta = torch.bmm(gamma.float()[:, None, :], gs[:, : s + 1])[:, 0]  # [B, text]
            else:
                fit = torch.bmm(gamma[:, None, :], atoms[chosen])[:, 0]  # A_Sᵀ γ: [B, d]
                beta = fit.float() @ a32.T
            alpha = xy32 - beta  # residual correlations (fp32)
        coef = torch.zeros(nb, n_text, dtype=atoms.dtype)
        coef.scatter_add_(1, chosen, gamma)
        out[b0 : b0 + block] = coef
    return out
