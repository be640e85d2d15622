"""Per-token (spatial) maps of MLP neurons' second-order effects (math only, no I/O).

With the lens's frozen patterns and LayerNorm statistics (`engine.core.second_order`), neuron n's
effect along a direction d splits exactly over the tokens m that wrote it:

    effect_n · d = Σ_m a[n, m] · Σ_{l' > l, h} pattern[l', h][cls, m] / σ[l', m] · g[l', h, n] / std

    g[l', h, n] = u[l', h, n] @ basis[l', h] @ d_n                         (weights and d only)

so the per-patch weights sum, with the class token's share, to the neuron's effect · d.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from engine.core.decompose import _pattern
from engine.core.types import ViTWeights


def path_gains(u: Tensor, basis: Tensor, direction: Tensor) -> Tensor:
    """g [K, neuron] = u[k, n] @ basis[k] @ d_n.

    u: [K, neuron, d_head]; basis: [K, d_head, d_embed]; direction: [neuron, d_embed] (one per
    neuron) or [d_embed] (shared)."""
    if direction.dim() == 1:
        bd = basis @ direction  # [K, d_head]
        return torch.einsum("knd,kd->kn", u, bd)
    bd = torch.einsum("kde,ne->knd", basis, direction)  # [K, neuron, d_head]
    return (u * bd).sum(-1)


@torch.no_grad()
def token_weights(
    w: ViTWeights,
    attn_in: Mapping[int, Tensor],
    ln_std: Mapping[int, Tensor],
    acts: Tensor,
    std: Tensor,
    later: Sequence[int],
    gains: Tensor,
) -> Tensor:
    """Each token's share of each neuron's effect along its direction: [image, token, neuron].

    attn_in: {l': [image, token, d_model]} ln_1 outputs of the later blocks; ln_std: {l': [image,
    token]}; acts: [image, token, neuron] post-GELU activations of the chosen neurons; std:
    [image] ln_post's σ of the class token; later: the later blocks l' in path order; gains:
    [K, neuron] from `path_gains`, K = later × head row-major. Summed over tokens it equals the
    neuron's effect · d (`second_order.effects`)."""
    n_heads = w.n_heads
    g = gains.to(acts.dtype).reshape(len(later), n_heads, -1)  # [later, head, neuron]
    out = torch.zeros_like(acts)
    for i, lp in enumerate(later):
        weighted = _pattern(w, lp, attn_in[lp].to(acts.dtype))  # [image, head, token]
        weighted = weighted / ln_std[lp].to(acts.dtype)[:, None, :]
        out += torch.einsum("iht,hn->itn", weighted, g[i])  # Σ_h: [image, token, neuron]
    return out * acts / std.to(acts.dtype)[:, None, None]


def patch_grid(per_token: Tensor) -> Tensor:
    """[..., token] with the class token first -> the patches as [..., grid, grid] (row-major)."""
    patches = per_token[..., 1:]
    grid = int(round(patches.shape[-1] ** 0.5))
    if grid * grid != patches.shape[-1]:
        raise ValueError(f"{patches.shape[-1]} patches do not form a square grid")
    return patches.reshape(*patches.shape[:-1], grid, grid)
