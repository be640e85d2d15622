"""Plain data types shared by the model boundary and the math (no open_clip, no I/O).

`ModelDims` names a ViT's sizes in the project's vocabulary; `ViTWeights` holds the weights the
decomposition needs, read by state-dict name; `VisionCapture` holds the inputs captured by forward
hooks during one `encode_image` call. `engine.model` fills them; `engine.core` computes on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class ModelDims:
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_embed: int
    image_size: int
    patch_size: int
    grid: int


@dataclass
class ViTWeights:
    """The vision tower's weights needed by the decomposition, by their state-dict names.

    w_in: [layer, 3*d_model, d_model] (`attn.in_proj_weight`), b_in: [layer, 3*d_model],
    w_out: [layer, d_model, d_model] (`attn.out_proj.weight`), b_out: [layer, d_model],
    ln_post_weight/ln_post_bias: [d_model], ln_post_eps, proj: [d_model, d_embed],
    ln_1_weight/ln_1_bias: [layer, d_model], ln_1_eps.
    """

    n_heads: int
    w_in: Tensor
    b_in: Tensor
    w_out: Tensor
    b_out: Tensor
    ln_1_weight: Tensor
    ln_1_bias: Tensor
    ln_1_eps: float
    ln_post_weight: Tensor
    ln_post_bias: Tensor
    ln_post_eps: float
    proj: Tensor

    @property
    def n_layers(self) -> int:
        return self.w_in.shape[0]

    @property
    def d_model(self) -> int:
        return self.w_in.shape[2]


@dataclass
class VisionCapture:
    """Inputs captured by forward hooks during one `encode_image` call.

    embed:    [image, d_model]          class-token row of `ln_pre`'s output (the residual stream's start)
    attn_in:  {layer: [image, token, d_model]}  `ln_1` output of each chosen layer (attention's input)
    attn_out: [image, layer, d_model]   class-token row of each layer's attention output (all layers)
    mlp_out:  [image, layer, d_model]   class-token row of each layer's MLP output (all layers)
    resid:    [image, d_model]          class-token row of the final residual (`ln_post`'s input)
    output:   [image, d_embed]          `encode_image` (unnormalised)
    """

    embed: Tensor
    attn_in: dict[int, Tensor]
    attn_out: Tensor
    mlp_out: Tensor
    resid: Tensor
    output: Tensor
