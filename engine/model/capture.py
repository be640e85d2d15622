"""Weights by state-dict name and inputs by forward hooks: what the decomposition reads of a model.

Weights are read by their state-dict names (`in_proj_weight`, `out_proj`, `ln_1`, `ln_post`, `proj`);
inputs are captured with forward hooks on stable module paths (`visual.ln_pre`,
`visual.transformer.resblocks.{l}.ln_1|attn|mlp`, `visual.ln_post`). Nothing of open_clip is
copied or patched, and nothing here depends on the attention module's internals.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from engine.core import decompose as core_decompose
from engine.core.types import VisionCapture, ViTWeights
from engine.errors import UnsupportedModel
from engine.model.hooks import own_thread
from engine.model.loading import LoadedModel
from engine.model.timm_tower import STORE_NOT_YET, decompose_pooled_images, is_timm_tower


def vision_weights(lm: LoadedModel | torch.nn.Module) -> ViTWeights:
    """Read the vision tower's weights from its state dict (names are stable across open_clip)."""
    model = lm.model if isinstance(lm, LoadedModel) else lm
    if is_timm_tower(model):
        raise UnsupportedModel(STORE_NOT_YET)
    v = model.visual
    sd = {k: t.detach() for k, t in v.state_dict().items()}
    n_layers = len(v.transformer.resblocks)
    d_model = v.transformer.width
    p = "transformer.resblocks.{}."

    def stack(suffix: str, default_shape=None) -> Tensor:
        out = []
        for i in range(n_layers):
            key = p.format(i) + suffix
            if key in sd:
                out.append(sd[key])
            else:  # a bias-free projection: zeros of the right shape
                out.append(torch.zeros(default_shape, dtype=sd[p.format(i) + "ln_1.weight"].dtype))
        return torch.stack(out)

    return ViTWeights(
        n_heads=v.transformer.resblocks[0].attn.num_heads,
        w_in=stack("attn.in_proj_weight"),
        b_in=stack("attn.in_proj_bias", (3 * d_model,)),
        w_out=stack("attn.out_proj.weight"),
        b_out=stack("attn.out_proj.bias", (d_model,)),
        ln_1_weight=stack("ln_1.weight"),
        ln_1_bias=stack("ln_1.bias", (d_model,)),
        ln_1_eps=float(v.transformer.resblocks[0].ln_1.eps),
        ln_post_weight=sd["ln_post.weight"],
        ln_post_bias=sd.get("ln_post.bias", torch.zeros(d_model)),
        ln_post_eps=float(v.ln_post.eps),
        proj=sd["proj"],
    )


def _first(x):
    return x[0] if isinstance(x, tuple) else x


@torch.no_grad()
def capture(
    lm: LoadedModel | torch.nn.Module, pixels: Tensor, layers: Sequence[int]
) -> VisionCapture:
    """Run `encode_image` on `pixels` [image, 3, H, W] with hooks on stable module paths."""
    model = lm.model if isinstance(lm, LoadedModel) else lm
    v = model.visual
    blocks = v.transformer.resblocks
    layers = sorted(set(int(i) for i in layers))
    seen: dict[str, Tensor] = {}
    bf = getattr(v.transformer, "batch_first", True)

    def cls(t: Tensor) -> Tensor:  # class-token row, whatever the layout: [image, d_model]
        return t[:, 0] if bf else t[0]

    def bt(t: Tensor) -> Tensor:  # to [image, token, d_model]
        return t if bf else t.transpose(0, 1)

    hooks = []
    try:
        hooks.append(
            v.ln_pre.register_forward_hook(
                own_thread(lambda m, i, o: seen.__setitem__("embed", cls(o)))
            )
        )
        for i, blk in enumerate(blocks):
            hooks.append(
                blk.attn.register_forward_hook(
                    own_thread(
                        lambda m, inp, o, i=i: seen.__setitem__(f"attn_out{i}", cls(_first(o)))
                    )
                )
            )
            hooks.append(
                blk.mlp.register_forward_hook(
                    own_thread(lambda m, inp, o, i=i: seen.__setitem__(f"mlp_out{i}", cls(o)))
                )
            )
            if i in layers:
                hooks.append(
                    blk.ln_1.register_forward_hook(
                        own_thread(lambda m, inp, o, i=i: seen.__setitem__(f"attn_in{i}", bt(o)))
                    )
                )

        def post_hook(m, inp):
            x = inp[0]
            seen["resid"] = x if x.dim() == 2 else cls(x)

        hooks.append(v.ln_post.register_forward_pre_hook(own_thread(post_hook)))
        dtype = next(v.parameters()).dtype
        output = model.encode_image(pixels.to(device=next(v.parameters()).device, dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
    n = len(blocks)
    return VisionCapture(
        embed=seen["embed"],
        attn_in={i: seen[f"attn_in{i}"] for i in layers},
        attn_out=torch.stack([seen[f"attn_out{i}"] for i in range(n)], dim=1),
        mlp_out=torch.stack([seen[f"mlp_out{i}"] for i in range(n)], dim=1),
        resid=seen["resid"],
        output=output,
    )


def capture_grad(
    lm: LoadedModel | torch.nn.Module, pixels: Tensor, layers: Sequence[int]
) -> VisionCapture:
    """`capture` with autograd on: gradients reach `pixels` (feature visualisation)."""
    return capture.__wrapped__(lm, pixels, layers)


def decompose_images(lm, pixels: Tensor, layers: Sequence[int], weights=None):
    """capture + decompose for pixels [image, 3, H, W] -> `engine.core.decompose.Decomposition`
    (a MAP-pooled timm tower: `engine.core.pooling.PooledDecomposition`)."""
    model = lm.model if isinstance(lm, LoadedModel) else lm
    if is_timm_tower(model):
        return decompose_pooled_images(model, pixels, layers, weights)
    w = weights if weights is not None else vision_weights(lm)
    return core_decompose.decompose(w, capture(lm, pixels, layers), layers)


def mlp_proj_weight(lm: LoadedModel | torch.nn.Module, layer: int) -> Tensor:
    """Block `layer`'s `mlp.c_proj.weight` [d_model, neuron] (column n = neuron n's write)."""
    model = lm.model if isinstance(lm, LoadedModel) else lm
    sd = model.visual.state_dict()
    return sd[f"transformer.resblocks.{int(layer)}.mlp.c_proj.weight"].detach()


@torch.no_grad()
def capture_neurons(
    lm: LoadedModel | torch.nn.Module,
    pixels: Tensor,
    layers: Sequence[int],
    neuron_layers: Sequence[int],
):
    """`capture` plus what the second-order lens of `neuron_layers` needs, in the same forward:
    post-GELU activations (pre-hook on `mlp.c_proj`), the MLP's write without its bias, and every
    later block's `ln_1` σ per token (pre-hook on `ln_1`). The later blocks' attention inputs are
    captured too. Returns (VisionCapture, engine.core.second_order.NeuronCapture)."""
    return _capture_neurons(lm, pixels, layers, neuron_layers, capture)


def capture_neurons_grad(lm: LoadedModel | torch.nn.Module, pixels: Tensor, neuron_layers):
    """`capture_neurons` with autograd on: gradients reach `pixels` (a neuron's feature
    visualisation)."""
    return _capture_neurons(lm, pixels, [], neuron_layers, capture.__wrapped__)


def _capture_neurons(lm, pixels, layers, neuron_layers, capture_fn):
    from engine.core.second_order import NeuronCapture

    model = lm.model if isinstance(lm, LoadedModel) else lm
    v = model.visual
    blocks = v.transformer.resblocks
    bf = getattr(v.transformer, "batch_first", True)
    neuron_layers = sorted(set(int(i) for i in neuron_layers))
    later = sorted({j for i in neuron_layers for j in range(i + 1, len(blocks))})
    acts: dict[int, Tensor] = {}
    written: dict[int, Tensor] = {}
    ln_std: dict[int, Tensor] = {}

    def bt(t: Tensor) -> Tensor:  # to [image, token, d]
        return t if bf else t.transpose(0, 1)

    def on_proj(i):
        def hook(m, inp):
            acts[i] = bt(inp[0])  # [image, token, neuron]
            # Σ_n a[n, m] w_n, without the bias: [image, token, d_model]
            written[i] = bt(torch.nn.functional.linear(inp[0], m.weight))

        return hook

    def on_ln(i):
        def hook(m, inp):
            x = bt(inp[0]).float()
            ln_std[i] = (x.var(dim=-1, unbiased=False) + m.eps).sqrt()  # [image, token]

        return hook

    hooks = []
    try:
        for i in neuron_layers:
            hooks.append(blocks[i].mlp.c_proj.register_forward_pre_hook(own_thread(on_proj(i))))
        for i in later:
            hooks.append(blocks[i].ln_1.register_forward_pre_hook(own_thread(on_ln(i))))
        cap = capture_fn(lm, pixels, sorted(set(int(x) for x in layers) | set(later)))
    finally:
        for h in hooks:
            h.remove()
    return cap, NeuronCapture(acts=acts, written=written, ln_std=ln_std)
