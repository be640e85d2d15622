"""Exact direct-contribution decomposition of a CLIP ViT image embedding (math only, no I/O).

The class-token residual entering `ln_post` is a sum of terms written by the embedding, every
layer's attention (a sum over heads plus the `out_proj` bias) and every MLP:

    resid = embed + sum_l (sum_h head_out[l, h] + b_out[l]) + sum_l mlp_out[l]

`ln_post` is affine once its per-image mean and standard deviation are fixed, so with
P = (I - 11^T / d_model) diag(ln_post.weight) proj   [d_model, d_embed]

    output = sum_terms (term @ P) / std + ln_post.bias @ proj

holds exactly. Each head's term is computed from its attention input (captured `ln_1`
output), the fused `in_proj_weight` and `out_proj.weight` — never from the attention module.

Head coordinates. A head's term is `(z / std) @ W[l, h]` with `z [d_head]` its value mix and
`W[l, h] = W_O[h] @ P` a fixed `[d_head, d_embed]` map. With the thin SVD `W = U S Vᵀ` (rank
r <= d_head), `basis[l, h] = Vᵀ` has orthonormal rows and `coord = (z / std) @ U S` `[d_head]`, so
`head_out = coord @ basis` exactly and norms, dot products and cosines of one head's
contributions are the same on `coord`. Rank-deficient heads get zero rows in `basis` and zero
columns in `U S` beyond their rank. `coord` is computed straight from the attention input
through one `[d_model, d_head]` matrix per head (`HeadBases`, computed once per model): the
`[image, head, d_embed]` tensor is never formed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.core.layers import head_name, term_name
from engine.core.types import VisionCapture, ViTWeights

# a singular value below RANK_RTOL x the head's largest is treated as zero (rank deficiency):
# fp32 weights give ~1e-7, so this only catches structurally missing directions
RANK_RTOL = 1e-6


@dataclass
class HeadBases:
    """Everything the decomposition needs that depends only on the weights (computed once).

    layers:  the layers whose heads are decomposed (sorted, absolute indices)
    P:       [d_model, d_embed]                      ln_post linearisation (see module doc)
    basis:   [layer, head, d_head, d_embed]          orthonormal rows Vᵀ of W[l, h] (zero-padded)
    rank:    [layer, head] int                       rank r of W[l, h]
    value_to_coord: [layer, head, d_model, d_head]   W_v[h]ᵀ U S: attention input -> coordinates
    bias_coord:     [layer, head, d_head]            b_v[h] @ U S
    attn_bias: [layer(all), d_embed]                 b_out[l] @ P (per image: / std)
    ln_bias:   [d_embed]                             ln_post.bias @ proj
    """

    layers: list[int]
    P: Tensor
    basis: Tensor
    rank: Tensor
    value_to_coord: Tensor
    bias_coord: Tensor
    attn_bias: Tensor
    ln_bias: Tensor

    @property
    def d_head(self) -> int:
        return int(self.basis.shape[2])


class SumsToOutput:
    """What every decomposition of `encode_image` shares: labelled components, their sum and the
    remainder. A subclass gives `coord`, `head_out`, `heads_sum()`, `layers`, `rest_layers`,
    `attn_rest`, `mlp`, `output`, `attn_bias_terms()` [image, layer, d_embed] and
    `tail_terms()` (its own last terms, each [image, d_embed])."""

    def components(self) -> tuple[list[str], Tensor]:
        """All terms with labels: (labels, [image, component, d_embed]); they sum to `output`.

        Materialises every head in d_embed: for tests, `verify` and small batches."""
        n_image, n_layer, n_head, _ = self.coord.shape
        d_embed = self.output.shape[1]
        labels = [head_name(l, h) for l in self.layers for h in range(n_head)]
        parts = [self.head_out.reshape(n_image, n_layer * n_head, d_embed)]  # (layer, head)
        labels += [term_name(l, "attn_bias") for l in self.layers]
        parts.append(self.attn_bias_terms())
        labels += [term_name(l, "attn") for l in self.rest_layers]
        parts.append(self.attn_rest)
        labels += [term_name(l, "mlp") for l in range(self.mlp.shape[1])]
        parts.append(self.mlp)
        tail = self.tail_terms()
        labels += [name for name, _ in tail]
        parts += [t[:, None] for _, t in tail]
        return labels, torch.cat(parts, dim=1)

    def total(self) -> Tensor:
        """Sum of all components: [image, d_embed] (heads summed in coordinates)."""
        out = (
            self.heads_sum()
            + self.attn_bias_terms().sum(dim=1)
            + self.attn_rest.sum(dim=1)
            + self.mlp.sum(dim=1)
        )
        for _, t in self.tail_terms():
            out = out + t
        return out

    def remainder(self) -> Tensor:
        """output - total: [image, d_embed]. Zero up to floating-point error."""
        return self.output - self.total()

    def relative_error(self) -> float:
        """max |remainder| / max ||output||: the number `verify` and `build` check."""
        return float(self.remainder().abs().max() / self.output.norm(dim=-1).max().clamp_min(1e-30))


@dataclass
class Decomposition(SumsToOutput):
    """Components of `encode_image`, each already mapped to embedding space (/ std).

    coord:     [image, layer, head, d_head]   each head of `layers` in its own coordinates
    basis:     [layer, head, d_head, d_embed] orthonormal rows; head_out = coord @ basis
    rank:      [layer, head]                  rank of each head's map (rows past it are zero)
    layers:    absolute indices of the layers in coord (sorted)
    rest_layers: the other layers (their heads are summed into attn_rest)
    embed:     [image, d_embed]               class + position embedding (after ln_pre)
    mlp:       [image, layer(all), d_embed]   every MLP (all n_layers)
    attn_bias: [layer, d_embed]               `out_proj` bias of each layer of `layers`, NOT yet
                                              divided by std (constant; per image: / std)
    attn_rest: [image, rest_layer, d_embed]   heads summed + out_proj bias of each rest layer
    ln_bias:   [d_embed]                      ln_post.bias @ proj
    std:       [image]                        ln_post's standard deviation of the full residual
    output:    [image, d_embed]               the model's own `encode_image`
    """

    coord: Tensor
    basis: Tensor
    rank: Tensor
    layers: list[int]
    rest_layers: list[int]
    embed: Tensor
    mlp: Tensor
    attn_bias: Tensor
    attn_rest: Tensor
    ln_bias: Tensor
    std: Tensor
    output: Tensor

    @property
    def head_out(self) -> Tensor:
        """[image, layer, head, d_embed] = coord @ basis (materialised: tests and small batches)."""
        return torch.einsum("ilhk,lhke->ilhe", self.coord, self.basis)

    def heads_sum(self) -> Tensor:
        """Sum of every decomposed head, [image, d_embed], without forming [image, head, d_embed]."""
        n_image, n_layer, n_head, d_head = self.coord.shape
        flat = self.coord.reshape(n_image, n_layer * n_head * d_head)
        return flat @ self.basis.reshape(n_layer * n_head * d_head, self.output.shape[1])

    def attn_bias_terms(self) -> Tensor:
        """[image, layer, d_embed]: each decomposed layer's out_proj bias term, / std."""
        return self.attn_bias[None] / self.std[:, None, None]

    def tail_terms(self) -> list[tuple[str, Tensor]]:
        """The terms after the layers', each [image, d_embed]: embed, ln_bias."""
        n_image, d_embed = self.output.shape
        return [("embed", self.embed), ("ln_bias", self.ln_bias.expand(n_image, d_embed))]


def ln_projection(w: ViTWeights, dtype=torch.float32) -> Tensor:
    """P = (I - J/d) diag(gamma) proj: [d_model, d_embed]. Maps a residual term to d_embed * std."""
    proj = w.proj.to(dtype)
    gp = w.ln_post_weight.to(dtype)[:, None] * proj  # diag(gamma) proj: [d_model, d_embed]
    return gp - gp.mean(dim=0, keepdim=True)  # centring: (I - J/d) @ gp


def head_projection(w: ViTWeights, layer: int, P: Tensor) -> Tensor:
    """Per-head map from attention value space to embedding space W[l, h]: [head, d_head, d_embed]."""
    d_model, n_heads = w.d_model, w.n_heads
    d_head = d_model // n_heads
    w_o = w.w_out[layer].to(P.dtype)  # [d_model(out), d_model(in)]
    # out_proj input is the heads' concatenation: split its columns per head
    w_o_heads = w_o.T.reshape(n_heads, d_head, d_model)  # [head, d_head, d_model]
    return w_o_heads @ P  # [head, d_head, d_embed]


def head_svd(W: Tensor, rtol: float = RANK_RTOL) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD of per-head maps W [head, d_head, d_embed] (in float64).

    Returns (us [head, d_head, d_head] = U S with zero columns past the rank,
    basis [head, d_head, d_embed] = Vᵀ with zero rows past the rank, rank [head]); then
    `x @ W == (x @ us) @ basis` for any x [.., d_head]."""
    u, s, vh = torch.linalg.svd(W.to(torch.float64), full_matrices=False)  # s: [head, d_head]
    keep = s > rtol * s[:, :1].clamp_min(1e-300)  # [head, d_head]
    keep &= s[:, :1] > 0
    us = u * (s * keep)[:, None, :]  # [head, d_head, r]: columns scaled by S, zero past rank
    basis = vh * keep[:, :, None]
    return us, basis, keep.sum(dim=1)


def head_bases(w: ViTWeights, layers: Sequence[int], dtype=torch.float32, device=None) -> HeadBases:
    """The weight-only part of the decomposition for `layers` (once per model, not per batch)."""
    layers = sorted(set(int(l) for l in layers))
    n_heads, d_model = w.n_heads, w.d_model
    d_head = d_model // n_heads
    P64 = ln_projection(w, torch.float64)
    bases, ranks, v2c, bc = [], [], [], []
    for l in layers:
        us, basis, rank = head_svd(head_projection(w, l, P64))
        w_v = w.w_in[l].to(torch.float64)[2 * d_model :]  # [d_model(out: heads' values), d_model]
        b_v = w.b_in[l].to(torch.float64)[2 * d_model :]
        w_v_heads = w_v.reshape(n_heads, d_head, d_model)  # [head, d_head, d_model]
        v2c.append(w_v_heads.transpose(1, 2) @ us)  # [head, d_model, d_head]
        bc.append((b_v.reshape(n_heads, 1, d_head) @ us)[:, 0])  # [head, d_head]
        bases.append(basis)
        ranks.append(rank)
    d_embed = P64.shape[1]

    def stack(xs, shape):
        return torch.stack(xs) if xs else torch.zeros(shape, dtype=torch.float64)

    out = HeadBases(
        layers=layers,
        P=P64,
        basis=stack(bases, (0, n_heads, d_head, d_embed)),
        rank=stack(ranks, (0, n_heads)).to(torch.int32),
        value_to_coord=stack(v2c, (0, n_heads, d_model, d_head)),
        bias_coord=stack(bc, (0, n_heads, d_head)),
        attn_bias=w.b_out.to(torch.float64) @ P64,
        ln_bias=w.ln_post_bias.to(torch.float64) @ w.proj.to(torch.float64),
    )
    for name in ("P", "basis", "value_to_coord", "bias_coord", "attn_bias", "ln_bias"):
        setattr(out, name, getattr(out, name).to(dtype=dtype, device=device))
    out.rank = out.rank.to(device)
    return out


def _pattern(w: ViTWeights, layer: int, x: Tensor) -> Tensor:
    """The class-token query's attention pattern [image, head, token] for attention input x
    [image, token, d_model]. The query is folded into the key weights (q·k_t = (q W_k)·x_t + q·b_k,
    and q·b_k is the same for every token, so softmax drops it): no keys are formed."""
    n_image, n_token, d_model = x.shape
    n_heads = w.n_heads
    d_head = d_model // n_heads
    w_in, b_in = w.w_in[layer].to(x.dtype), w.b_in[layer].to(x.dtype)
    w_q, w_k, _ = w_in.split(d_model)  # each [d_model, d_model]
    b_q = b_in[:d_model]
    q = (x[:, 0] @ w_q.T + b_q).reshape(n_image, n_heads, d_head)  # class-token query
    # per head, a batched matmul over heads (broadcasting would copy W_k once per image)
    qk = torch.bmm(
        q.transpose(0, 1), w_k.reshape(n_heads, d_head, d_model)
    )  # [head, image, d_model]
    scores = torch.bmm(x, qk.permute(1, 2, 0)).transpose(1, 2) / d_head**0.5  # [image, head, token]
    return scores.softmax(dim=-1)


def _check_layers(cap: VisionCapture, layers: Sequence[int]) -> None:
    missing = [l for l in layers if l not in cap.attn_in]
    if missing:
        raise ValueError(
            f"layers {missing} were not captured; capture(..., layers) must include them"
        )


@torch.no_grad()
def decompose(
    w: ViTWeights,
    cap: VisionCapture,
    layers: Sequence[int],
    dtype=torch.float32,
    bases: HeadBases | None = None,
) -> Decomposition:
    """Exact decomposition of `cap.output` [image, d_embed]; heads of `layers` in coordinates.

    `bases`: `head_bases(w, layers)` computed once (a build passes it; else computed here)."""
    layers = sorted(set(int(l) for l in layers))
    _check_layers(cap, layers)
    device = cap.resid.device
    if bases is None or bases.layers != layers:
        bases = head_bases(w, layers, dtype, device)
    P = bases.P
    resid = cap.resid.to(dtype)  # [image, d_model]
    std = (resid.var(dim=-1, unbiased=False) + w.ln_post_eps).sqrt()  # LayerNorm's own statistic
    inv = (1.0 / std)[:, None]  # [image, 1]
    n_image = resid.shape[0]

    coords = []
    for i, l in enumerate(layers):
        x = cap.attn_in[l].to(dtype)  # [image, token, d_model]
        pattern = _pattern(w, l, x)  # [image, head, token]
        mixed = pattern @ x  # value mix, before the value projection: [image, head, d_model]
        c = torch.bmm(mixed.transpose(0, 1), bases.value_to_coord[i]).transpose(0, 1)  # [i, h, k]
        coords.append((c + bases.bias_coord[i]) * inv[:, None])
    n_heads, d_head = w.n_heads, w.d_model // w.n_heads
    coord = (
        torch.stack(coords, dim=1)
        if coords
        else torch.zeros(n_image, 0, n_heads, d_head, dtype=dtype, device=device)
    )
    rest = [l for l in range(w.n_layers) if l not in layers]
    attn_rest = cap.attn_out[:, rest].to(dtype) @ P * inv[:, None]  # [image, rest, d_embed]
    return Decomposition(
        coord=coord,
        basis=bases.basis,
        rank=bases.rank,
        layers=layers,
        rest_layers=rest,
        embed=cap.embed.to(dtype) @ P * inv,
        mlp=cap.mlp_out.to(dtype) @ P * inv[:, None],
        attn_bias=bases.attn_bias[layers],
        attn_rest=attn_rest,
        ln_bias=bases.ln_bias,
        std=std,
        output=cap.output.to(dtype),
    )


@torch.no_grad()
def patch_maps(
    w: ViTWeights,
    cap: VisionCapture,
    image: int,
    layers: Sequence[int],
    heads: Sequence[int] | None,
    direction: Tensor,
    return_cls: bool = False,
):
    """Per-patch contributions of chosen heads, contracted with a text direction.

    direction: [d_embed]. Returns maps [layer, head, grid, grid] where
    maps[l, h].sum() + cls[l, h] == head_out[image, l, h] @ direction (cls: the class token's own
    term, returned when `return_cls`). Never materialises d_embed per patch per head: the
    direction is pulled back through P, out_proj and the value projection into each head's
    attention-input space first (one [d_model] vector per head).
    """
    layers = [int(l) for l in layers]
    heads = list(range(w.n_heads)) if heads is None else [int(h) for h in heads]
    dtype = torch.float32
    d_model = w.d_model
    d_head = d_model // w.n_heads
    P = ln_projection(w, dtype).to(cap.resid.device)
    resid = cap.resid[image].to(dtype)
    std = (resid.var(unbiased=False) + w.ln_post_eps).sqrt()
    u = direction.to(dtype).to(P.device)
    maps, cls_terms = [], []
    for l in layers:
        if l not in cap.attn_in:
            raise ValueError(f"layer {l} was not captured")
        x = cap.attn_in[l][image : image + 1].to(dtype)  # [1, token, d_model]
        pattern = _pattern(w, l, x)[0, heads]  # [head, token]
        wu = head_projection(w, l, P)[heads] @ u  # pulled-back direction per head: [head, d_head]
        w_v = w.w_in[l].to(dtype)[2 * d_model :].reshape(w.n_heads, d_head, d_model)[heads]
        b_v = w.b_in[l].to(dtype)[2 * d_model :].reshape(w.n_heads, d_head)[heads]
        g = torch.einsum("hd,hdm->hm", wu, w_v)  # [head, d_model]
        value_dot = x[0] @ g.T + (b_v * wu).sum(dim=-1)  # v_t · wu per token: [token, head]
        per_token = pattern * value_dot.T / std  # [head, token]
        maps.append(per_token[:, 1:])  # patches only: [head, grid*grid]
        cls_terms.append(per_token[:, 0])
    out = torch.stack(maps)  # [layer, head, grid*grid]
    grid = int(round(out.shape[-1] ** 0.5))
    out = out.reshape(len(layers), len(heads), grid, grid)  # row-major patch order -> grid
    if return_cls:
        return out, torch.stack(cls_terms)
    return out
