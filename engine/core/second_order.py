"""The exact second-order lens for MLP neurons (math only, no I/O; docs/decomposition.md).

Neuron n of block l writes `a[n, m] · w_n` into the residual at token m (a: post-GELU activation,
w_n = `mlp.c_proj.weight[:, n]`). With every later block l' > l's attention pattern and `ln_1`
standard deviation σ[l', m] frozen at their values on the image, the part of the image embedding
the neuron writes *through one later head* (its second-order effect) factorises exactly:

    effect_n(x) = Σ_{l' > l, h} c[l', h, n](x) · u[l', h, n] @ basis[l', h] / std(x)

    c[l', h, n](x) = Σ_m pattern[l', h][cls, m] · a[n, m] / σ[l', m]        (per image, scalar)
    u[l', h, n]    = (γ[l'] ⊙ centred(w_n)) @ value_to_coord[l', h]          ([d_head], weights only)

`value_to_coord[l', h] = W_v[h]ᵀ U S` and `basis[l', h] = Vᵀ` are the head's own coordinate maps
(`engine.core.decompose.head_bases`), so `c · u / std` is the neuron's part of the later head's
stored `coord`. LayerNorm's mean is linear, so centring w_n is exact; the `ln_1` bias, the value
bias and `c_proj`'s bias are not a neuron's and stay in the bias terms (see the docs).

Storage frame. For neuron n the K = (n_layers - 1 - l) · n_heads vectors `e[k, n] = u @ basis`
([K, d_embed], rows E_n) span its effects. With the Gram matrix G_n = E_n E_nᵀ = L_n L_nᵀ
(Cholesky, lower, positive diagonal: unique), `k = (c / std) @ L_n` are coordinates in the
orthonormal frame `Q_n = L_n⁻¹ E_n`: `effect = k @ Q_n` and `‖effect‖ = ‖k‖`. Builds store `k`
(int8 with one fp16 scale per image and neuron, see `quantise`) and `L_n`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from engine.core.decompose import _pattern, head_bases
from engine.core.types import ViTWeights

# jitter added to a neuron's Gram matrix, relative to its mean diagonal, when it is singular
# (a dead neuron: w_n centred is zero, or the later heads' maps do not see it)
GRAM_JITTER = 1e-12


def later_layers(layer: int, n_layers: int) -> list[int]:
    """The blocks after `layer` whose heads carry its neurons' second-order effects."""
    return list(range(int(layer) + 1, int(n_layers)))


@dataclass
class NeuronCapture:
    """What the lens needs of one forward pass beyond `VisionCapture` (filled by hooks).

    acts:    {layer: [image, token, neuron]}   post-GELU activations (input of `mlp.c_proj`)
    written: {layer: [image, token, d_model]}  the MLP's output minus `c_proj`'s bias
    ln_std:  {l': [image, token]}              `ln_1`'s σ per token (biased variance + eps)
    """

    acts: dict[int, Tensor]
    written: dict[int, Tensor]
    ln_std: dict[int, Tensor]


@dataclass
class NeuronBases:
    """What depends only on the weights, for the neurons of one MLP layer (once per build).

    layer:   the neurons' block (absolute index)
    later:   the later blocks l' > layer
    u:       [later, head, neuron, d_head]   γ[l'] ⊙ centred(w_n) in head (l', h)'s coordinates
    basis:   [later, head, d_head, d_embed]  orthonormal rows of each later head (decompose)
    chol:    [neuron, K, K]                  L_n, K = later·head: G_n = E_n E_nᵀ = L_n L_nᵀ
    """

    layer: int
    later: list[int]
    u: Tensor
    basis: Tensor
    chol: Tensor

    @property
    def n_paths(self) -> int:
        """K: the (later layer, head) paths, in (layer, head) row-major order."""
        return len(self.later) * int(self.basis.shape[1])

    @property
    def n_neurons(self) -> int:
        return int(self.u.shape[2])

    def paths(self) -> Tensor:
        """E: [neuron, K, d_embed], e[n, (l', h)] = u[l', h, n] @ basis[l', h]."""
        return torch.einsum("lhnk,lhke->nlhe", self.u, self.basis).flatten(1, 2)

    def frame(self, neurons: Sequence[int] | None = None) -> Tensor:
        """Q_n = L_n⁻¹ E_n: [neuron, K, d_embed], orthonormal rows (for non-degenerate neurons);
        the effect of stored coordinates k is `k @ Q_n`."""
        idx = slice(None) if neurons is None else torch.as_tensor(list(neurons), dtype=torch.long)
        u = self.u[:, :, idx]
        e = torch.einsum("lhnk,lhke->nlhe", u, self.basis).flatten(1, 2)  # [neuron, K, d_embed]
        return torch.linalg.solve_triangular(self.chol[idx].to(e.dtype), e, upper=False)


def centred_columns(w_proj: Tensor) -> Tensor:
    """w_proj [d_model, neuron] (`c_proj.weight`) with each column's mean removed: the part of
    w_n LayerNorm's centring keeps (`(I - 11ᵀ/d_model) w_n`). [d_model, neuron]"""
    return w_proj - w_proj.mean(dim=0, keepdim=True)


def neuron_bases(
    w: ViTWeights, w_proj: Tensor, layer: int, dtype=torch.float32, device=None
) -> NeuronBases:
    """u, the later heads' bases and the Cholesky frames for the neurons of block `layer`.

    w_proj: [d_model, neuron], block `layer`'s `mlp.c_proj.weight`. Computed in float64."""
    later = later_layers(layer, w.n_layers)
    if not later:
        raise ValueError(f"layer {layer} is the last block: its neurons reach no later head")
    hb = head_bases(w, later, torch.float64)
    wc = centred_columns(w_proj.to(torch.float64))  # [d_model, neuron]
    us = []
    for i, lp in enumerate(later):
        g = w.ln_1_weight[lp].to(torch.float64)[:, None] * wc  # γ ⊙ centred w_n: [d_model, neuron]
        us.append(torch.einsum("mn,hmk->hnk", g, hb.value_to_coord[i]))  # [head, neuron, d_head]
    u = torch.stack(us)  # [later, head, neuron, d_head]
    e = torch.einsum("lhnk,lhke->nlhe", u, hb.basis).flatten(1, 2)  # [neuron, K, d_embed]
    gram = e @ e.transpose(1, 2)  # [neuron, K, K]
    chol = gram_cholesky(gram)
    return NeuronBases(
        layer=int(layer),
        later=later,
        u=u.to(dtype=dtype, device=device),
        basis=hb.basis.to(dtype=dtype, device=device),
        chol=chol.to(dtype=dtype, device=device),
    )


def gram_cholesky(gram: Tensor) -> Tensor:
    """L with G = L Lᵀ per neuron, [neuron, K, K] (float64 in, float64 out). A singular G (dead
    neuron) gets GRAM_JITTER × its mean diagonal (or 1) added first, so L is always invertible."""
    k = gram.shape[-1]
    eye = torch.eye(k, dtype=gram.dtype)
    chol, info = torch.linalg.cholesky_ex(gram)
    bad = info != 0
    if bool(bad.any()):
        diag = gram[bad].diagonal(dim1=-2, dim2=-1).mean(-1)
        jitter = torch.where(diag > 0, diag, torch.ones_like(diag)) * GRAM_JITTER
        chol[bad] = torch.linalg.cholesky(gram[bad] + jitter[:, None, None] * eye)
    return chol


@torch.no_grad()
def coefficients(
    w: ViTWeights,
    attn_in: dict[int, Tensor],
    ln_std: dict[int, Tensor],
    acts: Tensor,
    later: Sequence[int],
) -> Tensor:
    """c[image, later, head, neuron] = Σ_m pattern[l', h][cls, m] · a[n, m] / σ[l', m].

    attn_in: {l': [image, token, d_model]} ln_1 outputs (for the class-token patterns);
    ln_std: {l': [image, token]} ln_1's σ per token; acts: [image, token, neuron] post-GELU
    activations of the neurons' block. One `[head, token] @ [token, neuron]` matmul per later
    layer and image."""
    out = []
    for lp in later:
        x = attn_in[lp].to(acts.dtype)
        pattern = _pattern(w, lp, x)  # [image, head, token]
        weighted = pattern / ln_std[lp].to(acts.dtype)[:, None, :]  # [image, head, token]
        out.append(torch.bmm(weighted, acts))  # [image, head, neuron]
    return torch.stack(out, dim=1)


def frame_coords(c: Tensor, std: Tensor, chol: Tensor) -> Tensor:
    """k [image, neuron, K] = (c / std) @ L_n: coordinates in the orthonormal frame Q_n.

    c: [image, later, head, neuron]; std: [image]; chol: [neuron, K, K]."""
    n_image, n_later, n_head, n_neuron = c.shape
    flat = c.reshape(n_image, n_later * n_head, n_neuron).permute(2, 0, 1)  # [neuron, image, K]
    k = torch.bmm(flat, chol.to(c.dtype))  # [neuron, image, K]
    return k.permute(1, 0, 2) / std[:, None, None].to(c.dtype)


def effects(
    c: Tensor, std: Tensor, nb: NeuronBases, neurons: Sequence[int] | None = None
) -> Tensor:
    """effect [image, neuron, d_embed] = Σ_{l', h} c[l', h, n] u[l', h, n] @ basis[l', h] / std.

    Materialises d_embed per neuron: for tests, `verify` and a few neurons."""
    idx = slice(None) if neurons is None else torch.as_tensor(list(neurons), dtype=torch.long)
    cu = torch.einsum("ilhn,lhnk->ilhnk", c[..., idx], nb.u[:, :, idx].to(c.dtype))
    out = torch.einsum("ilhnk,lhke->ine", cu, nb.basis.to(c.dtype))
    return out / std[:, None, None].to(c.dtype)


def head_coords(c: Tensor, std: Tensor, nb: NeuronBases, neuron: int) -> Tensor:
    """One neuron's effect through each later head, in that head's own coordinates (comparable
    with the store's `coord`): [image, later, head, d_head] = c · u / std."""
    return c[..., neuron, None] * nb.u[:, :, neuron].to(c.dtype) / std[:, None, None, None]


@torch.no_grad()
def layer_total(
    w: ViTWeights,
    attn_in: dict[int, Tensor],
    ln_std: dict[int, Tensor],
    written: Tensor,
    std: Tensor,
    nb: NeuronBases,
    value_to_coord: Tensor,
) -> Tensor:
    """The second-order effect of a whole residual write, not split into neurons: [image, d_embed].

    written: [image, token, d_model] what the block's neurons wrote (MLP output minus c_proj's
    bias); value_to_coord: [later, head, d_model, d_head] of the later heads. Equal to
    Σ_n effects (the factorisation), computed on the write itself: `verify --store` checks
    stored effects against it."""
    total = torch.zeros(written.shape[0], nb.basis.shape[-1], dtype=written.dtype)
    for i, lp in enumerate(nb.later):
        x = attn_in[lp].to(written.dtype)
        pattern = _pattern(w, lp, x) / ln_std[lp].to(written.dtype)[:, None, :]  # [i, h, t]
        mixed = torch.bmm(pattern, written)  # [image, head, d_model]
        mixed = mixed - mixed.mean(dim=-1, keepdim=True)  # LayerNorm's centring (linear)
        mixed = mixed * w.ln_1_weight[lp].to(written.dtype)
        coord = torch.einsum("ihm,hmk->ihk", mixed, value_to_coord[i].to(written.dtype))
        total += torch.einsum("ihk,hke->ie", coord, nb.basis[i].to(written.dtype))
    return total / std[:, None].to(written.dtype)


def direct_effect(acts_cls: Tensor, w_proj: Tensor, P: Tensor, std: Tensor) -> Tensor:
    """The first-order (direct) effect, kept apart from the lens: [image, neuron, d_embed] =
    a[n, cls] · (w_n @ P) / std. acts_cls: [image, neuron]; w_proj: [d_model, neuron]."""
    wp = w_proj.T.to(P.dtype) @ P  # [neuron, d_embed]
    return acts_cls[:, :, None].to(P.dtype) * wp[None] / std[:, None, None].to(P.dtype)


# ---- storage: int8 coordinates with one scale per image and neuron ----

QMAX = 127


def quantise(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """k [image, neuron, K] float -> (q [image, K, neuron] int8, scale [image, neuron] fp16).

    scale = max_K |k| / 127 rounded to fp16; q = round(k / scale) clipped to ±127, so every
    coordinate is off by at most scale / 2 and a neuron's effect by at most
    `quantisation_bound(scale, K)` (the frame is orthonormal)."""
    k = np.asarray(k, dtype=np.float32)
    amax = np.abs(k).max(axis=2)  # [image, neuron]
    scale = (amax / QMAX).astype(np.float16)
    s = scale.astype(np.float32)
    safe = np.where(s > 0, s, 1.0)
    q = np.clip(np.rint(k / safe[:, :, None]), -QMAX, QMAX).astype(np.int8)
    return np.ascontiguousarray(q.transpose(0, 2, 1)), scale


def dequantise(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """q [image, K, neuron] int8, scale [image, neuron] -> k [image, neuron, K] float32."""
    return q.transpose(0, 2, 1).astype(np.float32) * scale.astype(np.float32)[:, :, None]


def quantisation_bound(scale: np.ndarray, n_paths: int) -> np.ndarray:
    """Largest ‖effect - stored effect‖ per entry of scale (same shape): each coordinate is off by
    at most scale / 2, plus 127 · 2⁻²⁵ where fp16 rounded a subnormal scale (clipping), and the
    frame is orthonormal, so (scale / 2 + 127 · 2⁻²⁵) · √K."""
    return (0.5 * scale.astype(np.float64) + QMAX * 2.0**-25) * np.sqrt(n_paths)
