"""Exact direct-contribution decomposition of a CLIP ViT image embedding (math only, no I/O).

The class-token residual entering `ln_post` is a sum of terms written by the embedding, every
layer's attention (a sum over heads plus the `out_proj` bias) and every MLP:

    resid = embed + sum_l (sum_h head_out[l, h] + b_out[l]) + sum_l mlp_out[l]

`ln_post` is affine once its per-image mean and standard deviation are fixed, so with
P = (I - 11^T / d_model) diag(ln_post.weight) proj   [d_model, d_embed]

    output = sum_terms (term @ P) / std + ln_post.bias @ proj

holds exactly. Each head's term is computed from its attention input (captured `ln_1`
output), the fused `in_proj_weight` and `out_proj.weight` — never from the attention module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.core.layers import head_name
from engine.core.types import VisionCapture, ViTWeights


@dataclass
class Decomposition:
    """Components of `encode_image`, each already mapped to embedding space (d_embed).

    head_out:  [image, layer, head, d_embed]   direct contribution of each head of `layers`
    layers:    absolute indices of the layers in head_out
    embed:     [image, d_embed]                class + position embedding (after ln_pre)
    mlp:       [image, layer, d_embed]         every MLP (all n_layers)
    attn_bias: [image, layer, d_embed]         every attention's `out_proj` bias (all n_layers)
    attn_rest: [image, d_embed]                heads of the layers not in `layers`
    ln_bias:   [d_embed]                       ln_post.bias @ proj
    resid_mean, resid_std: [image]             ln_post statistics of the full residual
    output:    [image, d_embed]                the model's own `encode_image`
    """

    head_out: Tensor
    layers: list[int]
    embed: Tensor
    mlp: Tensor
    attn_bias: Tensor
    attn_rest: Tensor
    ln_bias: Tensor
    resid_mean: Tensor
    resid_std: Tensor
    output: Tensor

    def components(self) -> tuple[list[str], Tensor]:
        """All terms with labels: (labels, [image, component, d_embed]); they sum to `output`."""
        n_image, n_layer, n_head, d_embed = self.head_out.shape
        labels = [head_name(l, h) for l in self.layers for h in range(n_head)]
        parts = [self.head_out.reshape(n_image, n_layer * n_head, d_embed)]  # (layer, head) -> comp
        labels += [f"L{l}.attn_bias" for l in range(self.mlp.shape[1])]
        parts.append(self.attn_bias)
        labels += [f"L{l}.mlp" for l in range(self.mlp.shape[1])]
        parts.append(self.mlp)
        labels += ["attn_rest", "embed", "ln_bias"]
        parts += [
            self.attn_rest[:, None],
            self.embed[:, None],
            self.ln_bias.expand(n_image, d_embed)[:, None],
        ]
        return labels, torch.cat(parts, dim=1)

    def total(self) -> Tensor:
        """Sum of all components: [image, d_embed]."""
        return self.components()[1].sum(dim=1)

    def remainder(self) -> Tensor:
        """output - total: [image, d_embed]. Zero up to floating-point error."""
        return self.output - self.total()

    def relative_error(self) -> float:
        """max |remainder| / max ||output||: the number `verify` reports."""
        return float(self.remainder().abs().max() / self.output.norm(dim=-1).max().clamp_min(1e-30))


def ln_projection(w: ViTWeights, dtype=torch.float32) -> Tensor:
    """P = (I - J/d) diag(gamma) proj: [d_model, d_embed]. Maps a residual term to d_embed * std."""
    proj = w.proj.to(dtype)
    gp = w.ln_post_weight.to(dtype)[:, None] * proj  # diag(gamma) proj: [d_model, d_embed]
    return gp - gp.mean(dim=0, keepdim=True)  # centring: (I - J/d) @ gp


def head_projection(w: ViTWeights, layer: int, P: Tensor) -> Tensor:
    """Per-head map from attention value space to embedding space: [head, d_head, d_embed]."""
    d_model, n_heads = w.d_model, w.n_heads
    d_head = d_model // n_heads
    w_o = w.w_out[layer].to(P.dtype)  # [d_model(out), d_model(in)]
    # out_proj input is the heads' concatenation: split its columns per head
    w_o_heads = w_o.T.reshape(n_heads, d_head, d_model)  # [head, d_head, d_model]
    return w_o_heads @ P  # [head, d_head, d_embed]


def _values_and_pattern(w: ViTWeights, layer: int, x: Tensor) -> tuple[Tensor, Tensor]:
    """For attention input x [image, token, d_model]: values [image, head, token, d_head] and the
    class-token query's pattern [image, head, token]."""
    n_image, n_token, d_model = x.shape
    n_heads = w.n_heads
    d_head = d_model // n_heads
    w_in, b_in = w.w_in[layer].to(x.dtype), w.b_in[layer].to(x.dtype)
    w_q, w_k, w_v = w_in.split(d_model)  # each [d_model, d_model]
    b_q, b_k, b_v = b_in.split(d_model)
    q = x[:, 0] @ w_q.T + b_q  # class-token query only: [image, d_model]
    k = x @ w_k.T + b_k  # [image, token, d_model]
    v = x @ w_v.T + b_v
    q = q.reshape(n_image, n_heads, 1, d_head)  # split heads: [image, head, 1, d_head]
    k = k.reshape(n_image, n_token, n_heads, d_head).transpose(1, 2)  # [image, head, token, d_head]
    v = v.reshape(n_image, n_token, n_heads, d_head).transpose(1, 2)
    scores = (q @ k.transpose(-1, -2)).squeeze(2) / d_head**0.5  # [image, head, token]
    return v, scores.softmax(dim=-1)


@torch.no_grad()
def decompose(
    w: ViTWeights, cap: VisionCapture, layers: Sequence[int], dtype=torch.float32
) -> Decomposition:
    """Exact decomposition of `cap.output` [image, d_embed]; per-head terms for `layers`."""
    layers = sorted(set(int(l) for l in layers))
    missing = [l for l in layers if l not in cap.attn_in]
    if missing:
        raise ValueError(
            f"layers {missing} were not captured; capture(..., layers) must include them"
        )
    P = ln_projection(w, dtype).to(cap.resid.device)
    resid = cap.resid.to(dtype)  # [image, d_model]
    mean = resid.mean(dim=-1)
    std = (resid.var(dim=-1, unbiased=False) + w.ln_post_eps).sqrt()  # LayerNorm's own statistics
    inv = (1.0 / std)[:, None]  # [image, 1]

    def to_embed(t: Tensor) -> Tensor:  # [..., image?, d_model] residual term -> [.., d_embed]
        return t.to(dtype) @ P

    heads = []
    attn_rest = torch.zeros(resid.shape[0], P.shape[1], dtype=dtype, device=P.device)
    b_out = w.b_out.to(dtype).to(P.device)  # [layer, d_model]
    for l in range(w.n_layers):
        attn_l = cap.attn_out[:, l].to(dtype) - b_out[l]  # heads only: [image, d_model]
        if l in layers:
            v, pattern = _values_and_pattern(w, l, cap.attn_in[l].to(dtype))
            z = (pattern[..., None] * v).sum(dim=2)  # mix values: [image, head, d_head]
            W = head_projection(w, l, P)  # [head, d_head, d_embed]
            heads.append(
                torch.einsum("ihd,hde->ihe", z, W) * inv[:, None]
            )  # [image, head, d_embed]
        else:
            attn_rest += to_embed(attn_l) * inv
    head_out = (
        torch.stack(heads, dim=1)
        if heads
        else torch.zeros(resid.shape[0], 0, w.n_heads, P.shape[1], dtype=dtype)
    )
    return Decomposition(
        head_out=head_out,
        layers=layers,
        embed=to_embed(cap.embed) * inv,
        mlp=to_embed(cap.mlp_out) * inv[:, None],
        attn_bias=(b_out @ P)[None] * inv[:, None],
        attn_rest=attn_rest,
        ln_bias=(w.ln_post_bias.to(dtype) @ w.proj.to(dtype)).to(P.device),
        resid_mean=mean,
        resid_std=std,
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
    direction is pulled back through P and out_proj into each head's value space first.
    """
    layers = [int(l) for l in layers]
    heads = list(range(w.n_heads)) if heads is None else [int(h) for h in heads]
    dtype = torch.float32
    P = ln_projection(w, dtype).to(cap.resid.device)
    resid = cap.resid[image].to(dtype)
    std = (resid.var(unbiased=False) + w.ln_post_eps).sqrt()
    u = direction.to(dtype).to(P.device)
    maps, cls_terms = [], []
    for l in layers:
        if l not in cap.attn_in:
            raise ValueError(f"layer {l} was not captured")
        v, pattern = _values_and_pattern(w, l, cap.attn_in[l][image : image + 1].to(dtype))
        W = head_projection(w, l, P)[heads]  # [head, d_head, d_embed]
        wu = W @ u  # pulled-back direction per head: [head, d_head]
        per_token = pattern[0, heads] * torch.einsum("htd,hd->ht", v[0, heads], wu) / std
        maps.append(per_token[:, 1:])  # patches only: [head, grid*grid]
        cls_terms.append(per_token[:, 0])
    out = torch.stack(maps)  # [layer, head, grid*grid]
    grid = int(round(out.shape[-1] ** 0.5))
    out = out.reshape(len(layers), len(heads), grid, grid)  # row-major patch order -> grid
    if return_cls:
        return out, torch.stack(cls_terms)
    return out
