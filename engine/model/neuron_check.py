"""The second-order lens by its definition, through the model's own modules (the oracle).

`propagate_write` carries a residual write (one neuron's `a[n, m] · w_n`, or a whole MLP's) through
every later block's `ln_1` with the clean pass's σ frozen and the block's own attention module
with the clean `ln_1` output as query and key (the frozen pattern), then `ln_post` with the clean
std frozen and `proj`. It shares no code with `engine.core.second_order` (no coordinate maps, no
pattern of ours): `verify --neurons` and the tests compare the two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from engine.core.types import VisionCapture
from engine.model.loading import LoadedModel


@torch.no_grad()
def propagate_write(
    lm: LoadedModel | torch.nn.Module,
    cap: VisionCapture,
    ln_std: dict[int, Tensor],
    layer: int,
    write: Tensor,
) -> Tensor:
    """write [image, token, d_model] at block `layer` -> its second-order effect [image, d_embed].

    Per later block: the write centred, × γ, / the clean σ per token (ln_1 linearised, its bias
    left out), then `attn(clean, clean, linearised)` minus `attn(clean, clean, 0)` (the biases'
    path), class-token row; summed; then ln_post linearised with the clean std, then proj.
    `cap.attn_in` must hold every later block (capture_neurons captures them)."""
    model = lm.model if isinstance(lm, LoadedModel) else lm
    v = model.visual
    blocks = v.transformer.resblocks
    total = torch.zeros(write.shape[0], write.shape[2], dtype=torch.float32, device=write.device)
    for lp in range(int(layer) + 1, len(blocks)):
        blk = blocks[lp]
        x = cap.attn_in[lp].float()  # clean ln_1 output: [image, token, d_model]
        lin = (write - write.mean(-1, keepdim=True)) / ln_std[lp][..., None] * blk.ln_1.weight
        mha = blk.attn
        bf = getattr(mha, "batch_first", False)

        def call(val, x=x, mha=mha, bf=bf):
            q, val = (x, val) if bf else (x.transpose(0, 1), val.transpose(0, 1))
            o = mha(q, q, val, need_weights=False)[0]
            return o if bf else o.transpose(0, 1)

        total += (call(lin) - call(torch.zeros_like(lin)))[:, 0]
    std = (cap.resid.float().var(-1, unbiased=False) + v.ln_post.eps).sqrt()
    centred = total - total.mean(-1, keepdim=True)
    return (centred * v.ln_post.weight / std[:, None]) @ v.proj
