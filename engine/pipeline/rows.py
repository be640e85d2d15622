"""One batch of pixels -> the store's per-image rows, checked before anything is stored.

`BatchDecomposer` holds what depends only on the weights (the heads' bases and value-to-coordinate
maps, `engine.core.decompose.head_bases`, computed once per build) and turns a batch of pixels
into the rows of every per-image schema array: `coord` straight from the attention input (the
`[image, head, d_embed]` tensor is never formed), the MLP / rest-attention / embedding terms,
`std` and `output`. Every batch's decomposition is checked against the model's own
`encode_image` (components summed, in the compute dtype) before its rows are returned: a model
whose blocks compute something the decomposition does not model stops the build with one clear
error instead of storing wrong heads.
"""

from __future__ import annotations

import numpy as np
import torch

from engine.core import decompose
from engine.errors import UserError
from engine.model import capture, vision_weights
from engine.model.capture import capture_neurons

# max |output - Σ components| / max ||output|| per batch, by the model's parameter dtype. fp32:
# measured ~1e-7 on ViT-B/L; half precision: the model's own forward rounds every residual add
# at 2^-8 (bf16) / 2^-11 (fp16) relative, so the identity holds only to about that, summed over
# ~2 n_layers adds
RECONSTRUCTION_TOL = {
    torch.float32: 1e-4,
    torch.float64: 1e-4,
    torch.float16: 2e-2,
    torch.bfloat16: 5e-2,
}


class ReconstructionError(UserError):
    """A batch's components do not sum to encode_image: the model is not what we decompose."""


def check_batch(decomposer, dec, what: str) -> None:
    """Record `dec`'s relative error on `decomposer` (its worst so far) and raise
    ReconstructionError past the decomposer's tolerance; `what` names the decomposition."""
    err = dec.relative_error()
    decomposer.worst_error = max(decomposer.worst_error, err)
    if not err <= decomposer.tolerance:  # NaN fails too
        raise ReconstructionError(
            f"{what} does not reproduce encode_image on this batch (max |error| / max "
            f"||output|| = {err:.2e} > {decomposer.tolerance:g}): the model computes something "
            "the per-head decomposition does not model; nothing was stored"
        )


def f16(t: torch.Tensor) -> np.ndarray:
    """A tensor as the store's fp16 rows."""
    return t.to(torch.float16).cpu().numpy()


class BatchDecomposer:
    """Per-batch decomposition into store rows for one model and one choice of stored layers."""

    def __init__(
        self, lm, layers: list[int], *, weights=None, check: bool = True, neuron_layers=()
    ):
        self.lm = lm
        self.layers = sorted(int(l) for l in layers)
        self.weights = weights if weights is not None else vision_weights(lm)
        device = lm.device
        self.bases = decompose.head_bases(self.weights, self.layers, torch.float32, device)
        self.check = check
        param_dtype = next(lm.model.visual.parameters()).dtype
        self.tolerance = RECONSTRUCTION_TOL.get(param_dtype, 1e-4)
        self.worst_error = 0.0
        self.neurons = None  # the second-order lens of `neuron_layers` (engine.pipeline.neurons)
        if neuron_layers:
            from engine.pipeline.neurons import NeuronRows

            self.neurons = NeuronRows(lm, self.weights, list(neuron_layers), device)

    def constants(self) -> dict[str, np.ndarray]:
        """The weight-only arrays of the store: basis, rank, attn_bias (stored layers), ln_bias."""
        b = self.bases
        return {
            "basis": b.basis.float().cpu().numpy(),
            "rank": b.rank.to(torch.int32).cpu().numpy(),
            "attn_bias": b.attn_bias[self.layers].float().cpu().numpy(),
            "ln_bias": b.ln_bias.float().cpu().numpy(),
            **(self.neurons.constants() if self.neurons is not None else {}),
        }

    @torch.no_grad()
    def decompose(self, pixels: torch.Tensor) -> decompose.Decomposition:
        cap = capture(self.lm, pixels.to(self.lm.device), self.layers)
        return decompose.decompose(self.weights, cap, self.layers, bases=self.bases)

    @torch.no_grad()
    def rows(self, pixels: torch.Tensor) -> dict[str, np.ndarray]:
        """pixels [image, 3, H, W] -> rows of coord, mlp, attn_rest, embed, std, output.

        Raises ReconstructionError when the batch's components miss encode_image by more than
        the tolerance of the model's dtype."""
        ncap = None
        if self.neurons is not None:  # the lens's inputs, captured in the same forward
            cap, ncap = capture_neurons(
                self.lm, pixels.to(self.lm.device), self.layers, self.neurons.layers
            )
            dec = decompose.decompose(self.weights, cap, self.layers, bases=self.bases)
        else:
            dec = self.decompose(pixels)
        if self.check:
            check_batch(self, dec, "the decomposition")
        extra = {} if ncap is None else self.neurons.rows(cap, ncap, dec.std, self.tolerance)
        return {
            **extra,
            "coord": f16(dec.coord),
            "mlp": f16(dec.mlp),
            "attn_rest": f16(dec.attn_rest),
            "embed": f16(dec.embed),
            "std": dec.std.float().cpu().numpy(),
            "output": dec.output.float().cpu().numpy(),
        }
