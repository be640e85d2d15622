"""Exact decomposition of an attention-pooled ViT embedding (SigLIP / SigLIP 2; math only).

A timm ViT with MAP pooling (`global_pool='map'`, `AttentionPoolLatent`) has no class token: the
final norm is applied to EVERY token, a learned latent query attends over all tokens, and the
pooled vector goes through the pool's output projection and an MLP branch:

    x[t]        = embed[t] + Σ_l (Σ_h head_out[l, h, t] + b_out[l]) + Σ_l mlp_out[l, t]
    xn[t]       = LN(x[t]) = (x[t] C) ⊙ γ / σ[t] + β              (C: centring, σ[t]: per token)
    pooled_g    = Σ_t a[g, t] (xn[t] W_v[g]ᵀ + b_v[g])            (pool head g, pattern a[g, ·])
    y           = concat_g(pooled_g) W_projᵀ + b_proj
    output      = y + mlp(norm(y))

With the pool's pattern `a` and the final norm's per-token σ frozen (read from the model's own
forward), `y` is linear in the tokens: with w[g, t] = a[g, t] / σ[t] and
Q[g] = C diag(γ) W_v[g]ᵀ   [d_model, d_pool_head],

    y = Σ_terms Σ_g (Σ_t w[g, t] term[t]) Q[g] R_g + pool_bias,       R = W_projᵀ [d_pool, d_embed]
    pool_bias = (β W_vᵀ + b_v) W_projᵀ + b_proj                        (Σ_t a[g, t] = 1)

so every encoder component maps exactly to the embedding, through every pool head at once, and
`mlp(norm(y))` — nonlinear in y — is ONE term (`pool_mlp`) taken from the model's own forward.
The terms sum to `encode_image` exactly (up to fp32 rounding).

An encoder head reads every token: with its pattern A[h, t, s] at layer l and values v[h, s],
its term at token t is Σ_s A[h, t, s] v[h, s] W_O[h]ᵀ, so

    head_out[l, h] = Σ_g (Σ_s m[g, h, s] v[h, s]) W_O[h]ᵀ Q[g] R_g,   m[g, h, s] = Σ_t w[g, t] A[h, t, s]

(`m`: the pool-weighted pattern, the weight of source token s in the head's pooled image). The
head's image lies in the span of the n_pool_heads maps W_O[h]ᵀ Q[g] R_g (up to n_pool_heads ×
d_head dimensions, i.e. all of d_embed for SigLIP), so heads share one coordinate system:
the pooled value space, orthonormalised once, `R = U S Vᵀ`, `coord = u U S`, `basis = Vᵀ`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.core.decompose import RANK_RTOL, SumsToOutput


@dataclass
class PooledWeights:
    """What the decomposition reads of a MAP-pooled ViT tower, by state-dict name.

    n_heads, d_head:   encoder attention heads (`blocks.{l}.attn.num_heads`, `.head_dim`)
    w_out: [layer, d_model, n_heads*d_head]   `blocks.{l}.attn.proj.weight`
    b_out: [layer, d_model]                   `blocks.{l}.attn.proj.bias` (zeros if absent)
    norm_weight, norm_bias: [d_model], norm_eps   the final norm (`norm`)
    n_pool_heads
    pool_q:    [d_pool]                       the latent's query, `q(latent)` (weights only)
    pool_w_v:  [d_pool, d_model]              value half of `attn_pool.kv.weight`
    pool_b_v:  [d_pool]                       value half of `attn_pool.kv.bias`
    pool_w_proj: [d_embed, d_pool], pool_b_proj: [d_embed]   `attn_pool.proj`
    """

    n_heads: int
    d_head: int
    w_out: Tensor
    b_out: Tensor
    norm_weight: Tensor
    norm_bias: Tensor
    norm_eps: float
    n_pool_heads: int
    pool_q: Tensor
    pool_w_v: Tensor
    pool_b_v: Tensor
    pool_w_proj: Tensor
    pool_b_proj: Tensor

    @property
    def n_layers(self) -> int:
        return self.w_out.shape[0]

    @property
    def d_model(self) -> int:
        return self.w_out.shape[1]

    @property
    def d_pool_head(self) -> int:
        return self.pool_w_v.shape[0] // self.n_pool_heads


@dataclass
class PooledCapture:
    """Inputs captured by forward hooks during one `encode_image` call of a MAP-pooled tower.

    embed:    [image, token, d_model]           the residual stream's start (`norm_pre` output)
    qkv:      {layer: [image, token, 3*n_heads*d_head]}  `attn.qkv` output of the chosen layers
    attn_out: [image, layer, token, d_model]    each layer's attention output (all layers)
    mlp_out:  [image, layer, token, d_model]    each layer's MLP output (all layers)
    resid:    [image, token, d_model]           the final residual (`norm`'s input)
    pool_kv:  [image, token, 2*d_pool]          `attn_pool.kv` output (the pool's keys, values)
    pool_mlp: [image, d_embed]                  `attn_pool.mlp` output: the pool's MLP branch
    output:   [image, d_embed]                  `encode_image` (unnormalised)
    """

    embed: Tensor
    qkv: dict[int, Tensor]
    attn_out: Tensor
    mlp_out: Tensor
    resid: Tensor
    pool_kv: Tensor
    pool_mlp: Tensor
    output: Tensor


@dataclass
class PooledBases:
    """Weight-only parts (once per model): Q [pool_head, d_model, d_pool_head] (final norm's
    centring and γ folded into the pool's value map), the shared head coordinates
    `us [d_pool, k]` and `basis [k, d_embed]` (orthonormal rows, R = us @ basis), the constant
    `pool_bias [d_embed]`, and `b_out_q [layer(all), pool_head, d_pool_head]` (b_out[l] Q[g])."""

    Q: Tensor
    us: Tensor
    basis: Tensor
    pool_bias: Tensor
    b_out_q: Tensor

    @property
    def width(self) -> int:
        """The coordinate width k of every head (rank of the pool's output map)."""
        return int(self.basis.shape[0])


def pooled_bases(w: PooledWeights, dtype=torch.float32, device=None) -> PooledBases:
    """Everything that depends only on the weights, computed in float64 then cast."""
    f = torch.float64
    G, dp, d = w.n_pool_heads, w.d_pool_head, w.d_model
    gamma = w.norm_weight.to(f)
    w_v = w.pool_w_v.to(f).reshape(G, dp, d)  # [pool_head, d_pool_head, d_model]
    Q = gamma[None, :, None] * w_v.transpose(1, 2)  # diag(γ) W_v[g]ᵀ: [pool_head, d_model, dp]
    Q = Q - Q.mean(dim=1, keepdim=True)  # C @ (.): centring over d_model
    R = w.pool_w_proj.to(f).T  # [d_pool, d_embed]
    u, s, vh = torch.linalg.svd(R, full_matrices=False)
    keep = s > RANK_RTOL * s[:1].clamp_min(1e-300)
    us = (u * s)[:, keep]  # [d_pool, k]
    basis = vh[keep]  # [k, d_embed]
    pool_bias = (w.norm_bias.to(f) @ w.pool_w_v.to(f).T + w.pool_b_v.to(f)) @ R
    pool_bias = pool_bias + w.pool_b_proj.to(f)
    b_out_q = torch.einsum("ld,gdp->lgp", w.b_out.to(f), Q)  # [layer, pool_head, dp]
    out = PooledBases(Q=Q, us=us, basis=basis, pool_bias=pool_bias, b_out_q=b_out_q)
    for name in ("Q", "us", "basis", "pool_bias", "b_out_q"):
        setattr(out, name, getattr(out, name).to(dtype=dtype, device=device))
    return out


@dataclass
class PooledDecomposition(SumsToOutput):
    """Components of `encode_image` of a MAP-pooled tower, each in embedding space.

    coord:     [image, layer, head, k]       each head of `layers` in the shared coordinates
    basis:     [k, d_embed]                  orthonormal rows; head_out = coord @ basis
    layers, rest_layers                      decomposed layers (sorted) and the others
    embed:     [image, d_embed]              patch + position embedding, pooled
    mlp:       [image, layer(all), d_embed]  every MLP, pooled
    attn_bias: [image, layer, d_embed]       each decomposed layer's `attn.proj` bias, pooled (it
                                             depends on the image through the pool's pattern)
    attn_rest: [image, rest_layer, d_embed]  each other layer's whole attention output, pooled
    pool_bias: [d_embed]                     the final norm's β, the pool's value and proj biases
    pool_mlp:  [image, d_embed]              the pool's MLP branch mlp(norm(y)), one term
    pool_heads:[image, pool_head, d_embed]   the pooled vector split by pool head (a second view:
                                             Σ_g pool_heads + b_proj + pool_mlp = output)
    pool_pattern: [image, pool_head, token]  the pool's attention over tokens
    token_weight: [image, pool_head, token]  pool_pattern / σ[token] (what pools each term)
    output:    [image, d_embed]              the model's own `encode_image`
    """

    coord: Tensor
    basis: Tensor
    layers: list[int]
    rest_layers: list[int]
    embed: Tensor
    mlp: Tensor
    attn_bias: Tensor
    attn_rest: Tensor
    pool_bias: Tensor
    pool_mlp: Tensor
    pool_heads: Tensor
    pool_pattern: Tensor
    token_weight: Tensor
    output: Tensor

    @property
    def head_out(self) -> Tensor:
        """[image, layer, head, d_embed] = coord @ basis."""
        return self.coord @ self.basis

    def heads_sum(self) -> Tensor:
        """Sum of every decomposed head, [image, d_embed] (summed in coordinates first)."""
        return self.coord.sum(dim=(1, 2)) @ self.basis

    def attn_bias_terms(self) -> Tensor:
        """[image, layer, d_embed]: each decomposed layer's bias term (already per image)."""
        return self.attn_bias

    def tail_terms(self) -> list[tuple[str, Tensor]]:
        """The terms after the layers', each [image, d_embed]: embed, pool_bias, pool_mlp."""
        n_image, d_embed = self.output.shape
        return [
            ("embed", self.embed),
            ("pool_bias", self.pool_bias.expand(n_image, d_embed)),
            ("pool_mlp", self.pool_mlp),
        ]

    def pool_mlp_share(self) -> Tensor:
        """||pool_mlp|| / ||output|| per image [image]: how much of the embedding the heads'
        direct effects cannot explain term by term."""
        return self.pool_mlp.norm(dim=-1) / self.output.norm(dim=-1).clamp_min(1e-30)


def pool_pattern(w: PooledWeights, pool_kv: Tensor) -> Tensor:
    """The latent query's attention [image, pool_head, token] from the pool's keys (captured
    `attn_pool.kv` output [image, token, 2*d_pool]); scaled dot product, as timm computes it."""
    n_image, n_token, _ = pool_kv.shape
    G, dp = w.n_pool_heads, w.d_pool_head
    k = pool_kv[..., : G * dp].reshape(n_image, n_token, G, dp)  # keys: [image, token, g, dp]
    q = w.pool_q.to(pool_kv.dtype).reshape(G, dp)
    scores = torch.einsum("ntgp,gp->ngt", k, q) * dp**-0.5
    return scores.softmax(dim=-1)


def _pool(token_weight: Tensor, terms: Tensor, b: PooledBases) -> Tensor:
    """Pool per-token terms through the frozen pool: terms [image, (stack,) token, d_model] ->
    [image, (stack,) k] coordinates in the pool's value space orthonormalised (@ basis = d_embed)."""
    squeeze = terms.dim() == 3
    if squeeze:
        terms = terms[:, None]  # [image, 1, token, d_model]
    y = torch.einsum("ngt,nstd->nsgd", token_weight, terms)  # [image, stack, pool_head, d_model]
    u = torch.einsum("nsgd,gdp->nsgp", y, b.Q)  # [image, stack, pool_head, dp]
    out = u.flatten(2) @ b.us  # concat over pool heads -> [image, stack, d_pool] @ us -> k
    return out[:, 0] if squeeze else out


@torch.no_grad()
def decompose_pooled(
    w: PooledWeights,
    cap: PooledCapture,
    layers: Sequence[int],
    dtype=torch.float32,
    bases: PooledBases | None = None,
) -> PooledDecomposition:
    """Exact decomposition of `cap.output` [image, d_embed] of a MAP-pooled tower (module doc).

    Heads of `layers` (each needs `cap.qkv[layer]`) are in coordinates [image, layer, head, k];
    every other layer's attention is one term per layer."""
    layers = sorted(set(int(l) for l in layers))
    missing = [l for l in layers if l not in cap.qkv]
    if missing:
        raise ValueError(
            f"layers {missing} were not captured; capture(..., layers) must include them"
        )
    device = cap.resid.device
    b = bases if bases is not None else pooled_bases(w, dtype, device)
    resid = cap.resid.to(dtype)  # [image, token, d_model]
    std = (resid.var(dim=-1, unbiased=False) + w.norm_eps).sqrt()  # LayerNorm's own, per token
    a = pool_pattern(w, cap.pool_kv.to(dtype))  # [image, pool_head, token]
    wt = a / std[:, None, :]  # [image, pool_head, token]
    n_image, n_token, _ = resid.shape
    H, dh = w.n_heads, w.d_head

    def to_embed(c: Tensor) -> Tensor:
        return c @ b.basis

    coords = []
    for l in layers:
        qkv = cap.qkv[l].to(dtype).reshape(n_image, n_token, 3, H, dh)  # timm's qkv layout
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [image, head, token, d_head]
        pattern = ((q * dh**-0.5) @ k.transpose(-1, -2)).softmax(dim=-1)  # [image, head, t, s]
        m = torch.einsum("ngt,nhts->nghs", wt, pattern)  # pool-weighted pattern
        z = torch.einsum("nghs,nhsk->nghk", m, v)  # [image, pool_head, head, d_head]
        w_o = w.w_out[l].to(dtype).T.reshape(H, dh, w.d_model)  # proj's input split per head
        r = torch.einsum("nghk,hkd->nhgd", z, w_o)  # [image, head, pool_head, d_model]
        u = torch.einsum("nhgd,gdp->nhgp", r, b.Q)  # [image, head, pool_head, dp]
        coords.append(u.flatten(2) @ b.us)  # [image, head, k]
    k_width = b.width
    coord = (
        torch.stack(coords, dim=1)
        if coords
        else torch.zeros(n_image, 0, H, k_width, dtype=dtype, device=device)
    )
    rest = [l for l in range(w.n_layers) if l not in layers]
    s = wt.sum(dim=-1)  # [image, pool_head]: Σ_t w[g, t]
    bias_u = torch.einsum("ng,lgp->nlgp", s, b.b_out_q[layers])  # [image, layer, g, dp]
    attn_bias = to_embed(bias_u.flatten(2) @ b.us)  # [image, layer, d_embed]
    G, dp = w.n_pool_heads, w.d_pool_head
    v_pool = cap.pool_kv.to(dtype)[..., G * dp :].reshape(n_image, n_token, G, dp)
    pooled = torch.einsum("ngt,ntgp->ngp", a, v_pool)  # the model's own pooled values
    r_heads = w.pool_w_proj.to(dtype).T.reshape(G, dp, -1)  # [pool_head, dp, d_embed]
    pool_heads = torch.einsum("ngp,gpe->nge", pooled, r_heads)
    return PooledDecomposition(
        coord=coord,
        basis=b.basis,
        layers=layers,
        rest_layers=rest,
        embed=to_embed(_pool(wt, cap.embed.to(dtype), b)),
        mlp=to_embed(_pool(wt, cap.mlp_out.to(dtype), b)),
        attn_bias=attn_bias,
        attn_rest=to_embed(_pool(wt, cap.attn_out[:, rest].to(dtype), b)),
        pool_bias=b.pool_bias,
        pool_mlp=cap.pool_mlp.to(dtype),
        pool_heads=pool_heads,
        pool_pattern=a,
        token_weight=wt,
        output=cap.output.to(dtype),
    )


@torch.no_grad()
def pooled_patch_maps(
    w: PooledWeights,
    cap: PooledCapture,
    image: int,
    layers: Sequence[int],
    heads: Sequence[int] | None,
    direction: Tensor,
    bases: PooledBases | None = None,
) -> Tensor:
    """Per-patch contributions of chosen heads along a text direction, through the frozen pool.

    direction: [d_embed]. Returns maps [layer, head, grid, grid]: maps[l, h] at source patch s is
    Σ_g m[g, h, s] · v[h, s] W_O[h]ᵀ Q[g] R_g · direction — what the head reads from patch s
    (its pattern weighted by the pool's attention over the tokens it writes to, / σ) — and
    maps[l, h].sum() == head_out[image, l, h] @ direction exactly (no class token: every token is
    a patch). The direction is pulled back into each head's value space first (one [d_head]
    vector per head and pool head), so d_embed is never formed per patch."""
    layers = [int(l) for l in layers]
    heads = list(range(w.n_heads)) if heads is None else [int(h) for h in heads]
    dtype = torch.float32
    device = cap.resid.device
    b = bases if bases is not None else pooled_bases(w, dtype, device)
    G, dp, H, dh = w.n_pool_heads, w.d_pool_head, w.n_heads, w.d_head
    u = direction.to(dtype=dtype, device=device)
    ug = (u @ w.pool_w_proj.to(dtype=dtype, device=device)).reshape(G, dp)  # R_g u: [g, dp]
    qu = torch.einsum("gdp,gp->gd", b.Q, ug)  # Q[g] R_g u: [g, d_model]
    resid = cap.resid[image].to(dtype)  # [token, d_model]
    std = (resid.var(dim=-1, unbiased=False) + w.norm_eps).sqrt()  # [token]
    a = pool_pattern(w, cap.pool_kv[image : image + 1].to(dtype))[0]  # [g, token]
    wt = a / std  # [g, token]
    n_token = resid.shape[0]
    maps = []
    for l in layers:
        if l not in cap.qkv:
            raise ValueError(f"layer {l} was not captured")
        qkv = cap.qkv[l][image].to(dtype).reshape(n_token, 3, H, dh)
        q, k, v = qkv.permute(1, 2, 0, 3)[:, heads]  # each [head, token, d_head]
        pattern = ((q * dh**-0.5) @ k.transpose(-1, -2)).softmax(dim=-1)  # [head, t, s]
        m = torch.einsum("gt,hts->hgs", wt, pattern)  # [head, g, s]
        w_o = w.w_out[l].to(dtype).T.reshape(H, dh, w.d_model)[heads]  # [head, d_head, d_model]
        p = torch.einsum("hkd,gd->hgk", w_o, qu)  # pulled-back direction: [head, g, d_head]
        value_dot = torch.einsum("hsk,hgk->hgs", v, p)  # [head, g, source token]
        maps.append((m * value_dot).sum(dim=1))  # [head, token]
    out = torch.stack(maps)  # [layer, head, token]
    grid = int(round(n_token**0.5))
    return out.reshape(len(layers), len(heads), grid, grid)  # row-major patch order -> grid
