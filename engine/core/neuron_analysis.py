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

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

TOP_IMAGES = 100
N_WORDS = 32  # the reference's default
GRAM_MAX_TEXTS = (
    8192  # batched_omp keeps the bank's [text, text] Gram (fp64 + fp32) up to this size
)


IMAGE_BLOCK = 8  # images decoded to fp32 at once: their [8, K, neuron] block stays in cache


@contextmanager
def single_threaded():
    """torch on one thread inside the block, restored after. For loops of small ops (a few MB
    each): on a shared, loaded CPU every multi-threaded op waits at an OpenMP barrier for a
    descheduled sibling thread, which made the streamed passes 10x slower (docs/benchmarks.md,
    Neurons); large matmuls stay outside and keep every thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class NeuronStats:
    """Running statistics of one neuron layer over image chunks (two passes), on the stored form:
    q [image, K, neuron] int8 and scale [image, neuron] (k = q * scale, see
    `second_order.quantise`), in torch (single-threaded, IMAGE_BLOCK images decoded at a time).

    n_neurons, n_paths (K), top: sizes; n_factor_values: values per factor (η²)."""

    n_neurons: int
    n_paths: int
    top: int = TOP_IMAGES
    n_factor_values: list[int] = field(default_factory=list)
    n: int = 0

    def __post_init__(self):
        nn, k = self.n_neurons, self.n_paths
        self.sum_k = torch.zeros(k, nn, dtype=torch.float64)  # [K, neuron]
        self.group_sum = [torch.zeros(g, k, nn, dtype=torch.float64) for g in self.n_factor_values]
        self.group_n = [np.zeros(g) for g in self.n_factor_values]
        self.sum_norm = torch.zeros(nn, dtype=torch.float64)
        self.sum_sq = torch.zeros(nn, dtype=torch.float64)  # Σ ‖k - mean‖²
        self._top = _RunningTop(nn, k, self.top)
        self._neg_mu = None

    @staticmethod
    def _blocks(q, scale):
        """(offset, q [image, K, neuron], scale [image, neuron] float32) per IMAGE_BLOCK images."""
        q = torch.from_numpy(np.ascontiguousarray(q))
        scale = torch.from_numpy(np.ascontiguousarray(scale)).float()
        for b in range(0, len(q), IMAGE_BLOCK):
            yield b, q[b : b + IMAGE_BLOCK], scale[b : b + IMAGE_BLOCK]

    def update_mean(self, q: np.ndarray, scale: np.ndarray, codes=None) -> None:
        """Pass 1 over one chunk; codes: per factor [image] ints (<0: undefined)."""
        codes = [np.asarray(c) for c in (codes or [])]
        hot = []  # per factor [value, image] one-hot rows
        for f, c in enumerate(codes):
            g = self.n_factor_values[f]
            self.group_n[f] += np.bincount(c[c >= 0], minlength=g)
            hot.append(torch.from_numpy(np.arange(g)[:, None] == c[None]).float())
        with single_threaded():
            for b, qb, sb in self._blocks(q, scale):
                k = qb.float() * sb[:, None, :]  # [image, K, neuron]
                self.sum_k += k.sum(dim=0)
                for f, h in enumerate(hot):  # Σ over each value's images: one matmul
                    flat = h[:, b : b + len(k)] @ k.reshape(len(k), -1)
                    self.group_sum[f] += flat.view(-1, *k.shape[1:])
        self.n += len(q)
        self._neg_mu = None

    @property
    def mean(self) -> np.ndarray:
        """[neuron, K] mean effect coordinates over the collection."""
        return (self.sum_k / max(self.n, 1)).T.numpy()

    def update_top(self, q: np.ndarray, scale: np.ndarray, start: int) -> torch.Tensor:
        """Pass 2 over the chunk of images start..: centred norms, running top images. Returns
        the chunk's centred norms `[image, neuron]` (the unit pages' norm histogram)."""
        if self._neg_mu is None:
            self._neg_mu = -(self.sum_k / max(self.n, 1)).float()  # [K, neuron]
        out = []
        with single_threaded():
            for b, qb, sb in self._blocks(q, scale):
                centred = torch.addcmul(self._neg_mu, qb.float(), sb[:, None, :])
                sq = centred[:, 0] * centred[:, 0]  # Σ_K centred²: [image, neuron]
                for j in range(1, centred.shape[1]):
                    sq.addcmul_(centred[:, j], centred[:, j])
                self.sum_sq += sq.sum(dim=0, dtype=torch.float64)
                norms = sq.sqrt_()
                self.sum_norm += norms.sum(dim=0, dtype=torch.float64)
                self._top.add(norms, centred, start + b)
                out.append(norms)
        return torch.cat(out) if out else torch.zeros(0, self.n_neurons)

    def finish(self) -> None:
        """The top images sorted by centred norm (descending): top_norm [top, neuron],
        top_image [top, neuron] (-1: fewer images than top), top_k [top, neuron, K] centred."""
        with single_threaded():
            self.top_norm, self.top_image, self.top_k = self._top.dense()

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


class _RunningTop:
    """One share's largest centred norms per neuron, exact. Held unsorted: per neuron `top`
    slots (norm, image, centred k [K]; an empty slot has norm -1, below every norm) and its floor,
    the smallest slot. An effect whose norm beats the floor (strictly) waits in a list; when
    enough wait, `merge` ranks them per neuron and writes those that beat a slot into the slots
    they free, so only entries move, never whole tops. `dense` sorts at the end."""

    def __init__(self, n_neurons: int, n_paths: int, top: int):
        self.n_neurons, self.top = n_neurons, top
        self.norm = torch.full((n_neurons, top), -1.0)  # [neuron, slot]
        self.image = torch.full((n_neurons, top), -1, dtype=torch.long)
        self.k = torch.zeros(n_neurons, top, n_paths)  # [neuron, slot, K]
        self.floor = torch.full((n_neurons,), -1.0)
        self.waiting: list[tuple] = []
        self.n_waiting = 0
        self.budget = max(top * n_neurons, 4096)  # entries that trigger a merge

    def add(self, norms: torch.Tensor, centred: torch.Tensor, start: int) -> None:
        """norms [image, neuron] (fp32, >= 0) and centred [image, K, neuron] of images start.."""
        rows, cols = (norms > self.floor).nonzero(as_tuple=True)
        if len(rows):
            self.waiting.append((norms[rows, cols], cols, rows + start, centred[rows, :, cols]))
            self.n_waiting += len(rows)
            if self.n_waiting >= self.budget:
                self.merge()

    def merge(self) -> None:
        """Move the waiting entries that belong in their neuron's top into its slots."""
        if not self.waiting:
            return
        norm, neuron, image, k = (torch.cat([w[i] for w in self.waiting]) for i in range(4))
        self.waiting, self.n_waiting = [], 0
        # one sort, by neuron then norm descending: norms are >= 0, whose fp32 bits order as ints
        order = torch.argsort((neuron << 32) | (0x7FFFFFFF - norm.view(torch.int32)).long())
        counts = torch.bincount(neuron, minlength=self.n_neurons)
        first = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order)) - first[neuron[order]]
        order, rank = order[rank < self.top], rank[rank < self.top]  # at most top per neuron
        aff = counts.nonzero()[:, 0]  # neurons with waiting entries
        row = torch.zeros(self.n_neurons, dtype=torch.long)
        row[aff] = torch.arange(len(aff))
        r = row[neuron[order]]
        new = torch.full((len(aff), self.top), -torch.inf)  # waiting norms by rank; -inf: none
        new[r, rank] = norm[order]
        entry = torch.zeros(len(aff), self.top, dtype=torch.long)
        entry[r, rank] = order
        both = torch.cat([self.norm[aff], new], dim=1)  # [aff, 2 top]: slots (>= -1), then new
        picked = torch.zeros_like(both, dtype=torch.bool)
        picked.scatter_(1, both.topk(self.top, dim=1, sorted=False).indices, True)
        # per neuron, as many slots are freed as waiting entries get in: pair them in order
        r_old, slot = (~picked[:, : self.top]).nonzero(as_tuple=True)
        r_new, j = picked[:, self.top :].nonzero(as_tuple=True)
        e, n = entry[r_new, j], aff[r_old]
        self.norm[n, slot], self.image[n, slot], self.k[n, slot] = norm[e], image[e], k[e]
        self.floor[aff] = self.norm[aff].min(dim=1).values

    def dense(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(norm [top, neuron] descending, image [top, neuron], centred k [top, neuron, K]);
        empty slots (fewer images than top): -inf, -1, 0."""
        self.merge()
        norm, order = self.norm.sort(dim=1, descending=True, stable=True)
        image = self.image.gather(1, order)
        k = self.k.gather(1, order[..., None].expand_as(self.k))
        norm = torch.where(image >= 0, norm, -torch.inf)
        return norm.T.contiguous(), image.T.contiguous(), k.transpose(0, 1).contiguous()


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
def batched_omp(atoms: torch.Tensor, y: torch.Tensor, n_nonzero: int, block: int = 128):
    """Orthogonal matching pursuit vectorised over targets: the algorithm of scikit-learn's
    `orthogonal_mp` / `orthogonal_mp_gram` (tested equal to it), whose per-target loop copies the
    whole [text, text] Gram for every target (80 ms per neuron for a 3.6k-text bank).

    atoms: [text, d]; y: [target, d] -> coef [target, text]. Each step picks the atom of largest
    |correlation with the residual|, then refits the chosen atoms by least squares (Cholesky of
    their Gram, grown by one row per step, in atoms' dtype). Residual correlations xy - γ · G[S, :]
    come from the Gram's chosen rows (fp32) when the [text, text] Gram fits (GRAM_MAX_TEXTS),
    else through d (one [target, d] @ [d, text] matmul per step). The Gram is one matmul on every
    thread; the steps, small ops on `block` targets, run single-threaded (`single_threaded`)."""
    n_t, n_text = y.shape[0], atoms.shape[0]
    out = torch.zeros(n_t, n_text, dtype=atoms.dtype)
    a32 = atoms.float()
    gram = (atoms @ atoms.T) if n_text <= GRAM_MAX_TEXTS else None  # [text, text] atoms' dtype
    gram32 = None if gram is None else gram.float()
    xy32 = y.float() @ a32.T  # [target, text] correlations for the picks
    with single_threaded():
        for b0 in range(0, n_t, block):
            b1 = min(n_t, b0 + block)
            out[b0:b1] = _omp_block(atoms, a32, gram, gram32, y[b0:b1], xy32[b0:b1], n_nonzero)
    return out


def _omp_block(atoms, a32, gram, gram32, y, xy32, n_nonzero):
    """`batched_omp` for one block of targets y [B, d] with their correlations xy32 [B, text]
    (fp32; the refits use the chosen atoms' correlations in atoms' dtype)."""
    nb, n_text = xy32.shape
    tiny = torch.finfo(atoms.dtype).tiny
    rows = torch.arange(nb)
    rhs = torch.empty(nb, n_nonzero, 1, dtype=atoms.dtype)  # chosen atoms · y
    chosen = torch.zeros(nb, 0, dtype=torch.long)
    L = torch.zeros(nb, n_nonzero, n_nonzero, dtype=atoms.dtype)
    gs = None if gram is None else torch.empty(nb, n_nonzero, n_text)  # G[S, :] fp32
    alive = torch.ones(nb, dtype=torch.bool)
    alpha = xy32
    gamma = torch.zeros(nb, 0, dtype=atoms.dtype)
    for s in range(n_nonzero):
        a = alpha.abs()
        if s:
            a[rows[:, None], chosen] = -1.0  # never the same atom twice
        lam = a.argmax(dim=1)  # [B]
        alive &= alpha[rows, lam].double() ** 2 >= tiny
        rhs[:, s, 0] = (atoms[lam] * y).sum(dim=1)
        if gram is not None:
            g_ll = gram[lam, lam]
            g = gram[chosen, lam[:, None]][..., None]  # G[S, lam]: [B, s, 1]
        else:
            a_lam = atoms[lam]  # [B, d]
            g_ll = (a_lam * a_lam).sum(dim=1)
            g = torch.bmm(atoms[chosen], a_lam[:, :, None])
        if s:
            w = torch.linalg.solve_triangular(L[:, :s, :s], g, upper=False)[..., 0]
            lkk = g_ll - (w * w).sum(dim=1)
            alive &= lkk > tiny  # dependent atoms: stop that target here
            L[:, s, :s] = w
            L[:, s, s] = lkk.clamp_min(tiny).sqrt()
        else:
            L[:, 0, 0] = g_ll.sqrt()
        new = torch.cat([chosen, lam[:, None]], dim=1)
        g_new = torch.cholesky_solve(rhs[:, : s + 1], L[:, : s + 1, : s + 1], upper=False)[..., 0]
        old = torch.cat([gamma, gamma.new_zeros(nb, 1)], 1)
        gamma = torch.where(alive[:, None], g_new, old)
        chosen = new
        if s + 1 == n_nonzero:
            break  # the last refit needs no residual
        if gs is not None:
            gs[:, s] = gram32[lam]
            beta = torch.bmm(gamma.float()[:, None, :], gs[:, : s + 1])[:, 0]  # [B, text]
        else:
            fit = torch.bmm(gamma[:, None, :], atoms[chosen])[:, 0]  # A_Sᵀ γ: [B, d]
            beta = fit.float() @ a32.T
        alpha = xy32 - beta  # residual correlations (fp32)
    coef = torch.zeros(nb, n_text, dtype=atoms.dtype)
    coef.scatter_add_(1, chosen, gamma)
    return coef
