"""TextSpan (Gandelsman et al., 2024): describe one head by a few texts from a bank (math only).

For one head, C `[image, d_embed]` holds its contributions and R `[text, d_embed]` the bank's
unit text embeddings. R is projected onto the span of the top `rank` right singular vectors of
the *uncentred* C; C is centred over images; then, `n_texts` times, the text whose scores C·Rᵀ
vary most over images is picked, and its direction is projected out of both C and R.

`textspan` is exact and fast: everything after one Gram matrix CᵀC `[d_embed, d_embed]` happens in
the `rank`-dimensional basis of C's top singular vectors, with the image covariance in that basis
standing in for C (the score variance of a text t is Rₜ Σ Rₜᵀ; projecting a unit direction a out
of C turns Σ into PΣP with P = I − aaᵀ). `textspan_reference` is the literal algorithm, kept as
the oracle for tests and the baseline for the benchmark.

In head coordinates. A stored head is C = X B with X `[image, d_head]` its coordinates and B
`[d_head, d_embed]` orthonormal rows. C's singular vectors lie in B's row space, so projecting R
onto them only sees R Bᵀ, and every later step (scores C Rᵀ = X (R Bᵀ)ᵀ, projecting a direction
of that span out of C and R) is the same in coordinates: `textspan(X, project_bank(R, B))` picks
the same texts with the same shares as `textspan(C, R)`, at a Gram cost of N x d_head² instead of
N x d_embed².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RANK = 80
DEFAULT_TEXTS = 10
# singular values of C below RANK_RTOL x the largest are numerical noise, not part of its span:
# a head's output has rank <= d_head, and fp16 storage adds noise at about 1e-4 of the largest.
RANK_RTOL = 1e-3


@dataclass(frozen=True)
class TextSpanResult:
    """The texts picked for one head, best first.

    indices: [pick] rows of the bank; variance_removed: [pick] share of the head's total variance
    (over images, summed over d_embed) that each pick removed; score_var: [pick] variance over
    images of the scores C·Rₜᵀ at the moment the text was picked; total_var: the head's total
    variance before any pick.
    """

    indices: np.ndarray
    variance_removed: np.ndarray
    score_var: np.ndarray
    total_var: float

    def __len__(self) -> int:
        return len(self.indices)


def project_bank(r: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """R `[text, d_embed]` in a head's coordinates: R Bᵀ `[text, d_head]` (B `[d_head, d_embed]`)."""
    return np.asarray(r, dtype=np.float32) @ np.asarray(basis, dtype=np.float32).T


def _check(c: np.ndarray, r: np.ndarray) -> None:
    if c.ndim != 2 or r.ndim != 2:
        raise ValueError(
            f"C must be [image, d_embed] and R [text, d_embed]; got {c.shape}, {r.shape}"
        )
    if c.shape[1] != r.shape[1]:
        raise ValueError(f"d_embed differs: C has {c.shape[1]}, R has {r.shape[1]}")
    if c.shape[0] < 1 or r.shape[0] < 1:
        raise ValueError("TextSpan needs at least one image and one text")


def _empty(total_var: float) -> TextSpanResult:
    return TextSpanResult(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), total_var)


def head_moments(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean `[d_embed]` (fp64) and centred Gram matrix `[d_embed, d_embed]` (fp64) of C [image, d_embed].

    The Gram matrix of the centred C is computed in C's dtype by BLAS (fp32 for stored heads) and
    accumulated into fp64; centring first avoids the cancellation of CᵀC/N − μμᵀ.
    """
    n = c.shape[0]
    mu = c.mean(axis=0, dtype=np.float64)
    cc = c - mu.astype(c.dtype)  # [image, d_embed], centred
    gram_c = (cc.T @ cc).astype(np.float64)  # [d_embed, d_embed]
    # the centred C's mean is not exactly 0 in low precision: fold its residual mean back in
    resid = cc.mean(axis=0, dtype=np.float64)
    gram_c -= n * np.outer(resid, resid)
    return mu + resid, gram_c, n


def textspan_from_moments(
    mu: np.ndarray,
    gram_c: np.ndarray,
    n_images: int,
    r: np.ndarray,
    *,
    rank: int = DEFAULT_RANK,
    n_texts: int = DEFAULT_TEXTS,
    rtol: float = RANK_RTOL,
) -> TextSpanResult:
    """TextSpan from a head's moments (see `head_moments`) and R [text, d_embed]."""
    d_embed = gram_c.shape[0]
    total_var = float(np.trace(gram_c)) / n_images
    if n_texts <= 0 or not np.isfinite(total_var) or total_var <= 0.0:
        return _empty(max(total_var, 0.0) if np.isfinite(total_var) else 0.0)
    # uncentred Gram CᵀC = centred Gram + N μμᵀ; its eigenvectors are C's right singular vectors
    gram_u = gram_c + n_images * np.outer(mu, mu)  # [d_embed, d_embed]
    evals, evecs = np.linalg.eigh(gram_u)  # ascending eigenvalues = squared singular values
    evals, evecs = evals[::-1], evecs[:, ::-1]
    numerical_rank = int(np.sum(evals > (rtol**2) * evals[0]))
    k = max(1, min(rank, d_embed, n_images, numerical_rank))
    basis = evecs[:, :k]  # [d_embed, k]: top-k right singular vectors
    cov = basis.T @ gram_c @ basis / n_images  # [k, k]: image covariance of C in the basis
    rk = r.astype(np.float64) @ basis  # [text, k]: R projected onto the span, in the basis
    picked = np.zeros(r.shape[0], dtype=bool)
    idx, removed, svar = [], [], []
    for _ in range(min(n_texts, r.shape[0])):
        # score variance of every text at once: diag(Rk Σ Rkᵀ)
        var = np.einsum("tk,tk->t", rk @ cov, rk)  # [text]
        var[picked] = -np.inf
        t = int(np.argmax(var))
        norm2 = float(rk[t] @ rk[t])
        if not np.isfinite(var[t]) or var[t] <= 1e-12 * total_var or norm2 <= 1e-24:
            break  # nothing left that any text can explain
        a = rk[t] / np.sqrt(norm2)  # [k], unit direction of the picked text
        ca = cov @ a  # [k]
        gain = float(a @ ca)  # variance along a, removed by the projection
        idx.append(t)
        removed.append(gain / total_var)
        svar.append(float(var[t]))
        picked[t] = True
        # project a out of C (Σ ← PΣP) and out of R (Rk ← Rk P), P = I − aaᵀ
        cov = cov - np.outer(ca, a) - np.outer(a, ca) + gain * np.outer(a, a)
        rk = rk - np.outer(rk @ a, a)
    return TextSpanResult(
        np.asarray(idx, dtype=np.int64), np.asarray(removed), np.asarray(svar), total_var
    )


def textspan(
    c: np.ndarray,
    r: np.ndarray,
    *,
    rank: int = DEFAULT_RANK,
    n_texts: int = DEFAULT_TEXTS,
    rtol: float = RANK_RTOL,
) -> TextSpanResult:
    """TextSpan for one head. C: [image, d_embed] contributions; R: [text, d_embed] unit texts.

    `rank` is capped at min(d_embed, image) and at C's numerical rank (singular values above
    `rtol` x the largest); `n_texts` at the number of texts. A head with no variance (e.g. all
    zeros) gets no texts. Deterministic.
    """
    c = np.asarray(c)
    r = np.asarray(r)
    _check(c, r)
    if c.dtype not in (np.float32, np.float64):
        c = c.astype(np.float32)
    mu, gram_c, n = head_moments(c)
    return textspan_from_moments(mu, gram_c, n, r, rank=rank, n_texts=n_texts, rtol=rtol)


def textspan_reference(
    c: np.ndarray,
    r: np.ndarray,
    *,
    rank: int = DEFAULT_RANK,
    n_texts: int = DEFAULT_TEXTS,
    rtol: float = RANK_RTOL,
) -> TextSpanResult:
    """The literal algorithm (full SVD of C, explicit [image, text] scores), fp64. Slow: tests only.

    C: [image, d_embed]; R: [text, d_embed].
    """
    _check(c, r)
    c = np.asarray(c, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    _, sv, vh = np.linalg.svd(c, full_matrices=False)  # vh: [min(image, d_embed), d_embed]
    numerical_rank = int(np.sum(sv > rtol * sv[0])) if sv[0] > 0 else 1
    vh = vh[: max(1, min(rank, *c.shape, numerical_rank))]
    r = r @ vh.T @ vh  # [text, d_embed]: projected onto the span of the top singular vectors
    c = c - c.mean(axis=0)
    total_var = float((c**2).sum()) / c.shape[0]
    if total_var <= 0.0:
        return _empty(0.0)
    picked = np.zeros(r.shape[0], dtype=bool)
    idx, removed, svar = [], [], []
    for _ in range(min(n_texts, r.shape[0])):
        scores = c @ r.T  # [image, text]
        var = scores.var(axis=0)  # [text]
        var[picked] = -np.inf
        t = int(np.argmax(var))
        norm2 = float(r[t] @ r[t])
        if var[t] <= 1e-12 * total_var or norm2 <= 1e-24:
            break
        before = float((c**2).sum()) / c.shape[0]
        d = r[t] / np.sqrt(norm2)  # [d_embed]
        c = c - np.outer(c @ d, d)
        r = r - np.outer(r @ d, d)
        idx.append(t)
        removed.append((before - float((c**2).sum()) / c.shape[0]) / total_var)
        svar.append(float(var[t]))
        picked[t] = True
    return TextSpanResult(
        np.asarray(idx, dtype=np.int64), np.asarray(removed), np.asarray(svar), total_var
    )
