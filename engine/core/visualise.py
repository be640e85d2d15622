"""Feature visualisation of one head: an input image that maximises its contribution (math only).

The objective for head (l, h) with unit direction u `[d_embed]` (its first principal direction,
`engine.core.units`) is its direct contribution along u, `head_out[l, h] · u`, computed
differentiably from a capture of the image's forward pass (`head_score`): the class-token
query's attention pattern over tokens, each token's value pulled back along u, divided by
ln_post's standard deviation — the same sum `decompose.patch_maps` splits per patch.

The image is parametrised as in MACO (Fel et al., 2023, "Unlocking feature visualization for
deeper networks with magnitude constrained optimization"): per channel, a Fourier spectrum whose
**magnitude is fixed** (a natural-image 1/f power law; MACO uses ImageNet's average spectrum, not
available offline) and whose **phase is optimised**, so the image keeps natural-image energy
across frequencies and cannot turn into high-frequency adversarial noise. The three optimised
channels are decorrelated colour channels (standardised, then mapped to RGB by natural images'
colour correlation, as in Lucid and MACO) and squashed by a sigmoid; three learned per-channel
offsets carry the image's mean colour (a spectrum's DC term has no phase to learn). Each step scores a few random crops
(rescaled) with a little pixel noise, the usual robustness augmentations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.core.decompose import _pattern, head_projection, ln_projection
from engine.core.types import VisionCapture, ViTWeights

DEFAULT_STEPS = 256
DEFAULT_LR = 0.05
DEFAULT_VIEWS = 4


def head_score(
    w: ViTWeights, cap: VisionCapture, layer: int, head: int, direction: Tensor
) -> Tensor:
    """`head_out[image, layer, head] · direction` `[image]`, differentiable w.r.t. the capture.

    direction: `[d_embed]`. Equals `decompose(...).head_out[:, l, h] @ direction` (and the sum
    of `patch_maps` plus its class-token term)."""
    d_model = w.d_model
    d_head = d_model // w.n_heads
    x = cap.attn_in[layer]  # [image, token, d_model]
    dtype = x.dtype
    P = ln_projection(w, dtype).to(x.device)  # [d_model, d_embed]
    std = (cap.resid.to(dtype).var(dim=-1, unbiased=False) + w.ln_post_eps).sqrt()  # [image]
    pattern = _pattern(w, layer, x)[:, head]  # [image, token]
    wu = head_projection(w, layer, P)[head] @ direction.to(dtype).to(x.device)  # [d_head]
    w_v = w.w_in[layer].to(dtype)[2 * d_model :].reshape(w.n_heads, d_head, d_model)[head]
    b_v = w.b_in[layer].to(dtype)[2 * d_model :].reshape(w.n_heads, d_head)[head]
    g = wu @ w_v  # the direction pulled back to the attention input: [d_model]
    value_dot = x @ g + b_v @ wu  # each token's value along the direction: [image, token]
    return (pattern * value_dot).sum(dim=-1) / std


def neuron_score(
    w: ViTWeights,
    attn_in: dict,
    ln_std: dict,
    acts: Tensor,
    std: Tensor,
    later: list[int],
    gains: Tensor,
) -> Tensor:
    """A neuron's second-order effect along its direction d, `effect_n · d` `[image]`,
    differentiable w.r.t. everything it reads (docs/unit-pages.md, "Neurons"):

        Σ_{l' > l, h} Σ_m pattern[l', h][cls, m] · a_n[m] / σ[l', m] · g[l', h] / std

    attn_in: {l': [image, token, d_model]} ln_1 outputs of the later blocks (for their
    class-token patterns); ln_std: {l': [image, token]}; acts: `[image, token]` the neuron's
    post-GELU activations; std: `[image]` ln_post's σ; later: the later blocks in path order;
    gains: `[K]` g = u[k, n] @ basis[k] @ d (`neuron_maps.path_gains`), K = later × head. Equals
    `neuron_maps.token_weights(...).sum(tokens)` (the lens on this image), but with autograd."""
    g = gains.to(acts.dtype).reshape(len(later), w.n_heads)  # [later, head]
    total = torch.zeros(acts.shape[0], dtype=acts.dtype, device=acts.device)
    for i, lp in enumerate(later):
        weighted = _pattern(w, lp, attn_in[lp].to(acts.dtype))  # [image, head, token]
        weighted = weighted / ln_std[lp].to(acts.dtype)[:, None, :]
        total = total + torch.einsum("iht,it,h->i", weighted, acts, g[i])
    return total / std.to(acts.dtype)


def spectrum_magnitude(size: int, decay: float = 1.0) -> Tensor:
    """The fixed magnitude `[size, size // 2 + 1]`: 1 / f^decay (f in cycles per image, the DC
    term at f = 1), scaled to unit root mean square."""
    fy = torch.fft.fftfreq(size)[:, None] * size  # [size, 1]
    fx = torch.fft.rfftfreq(size)[None, :] * size  # [1, size // 2 + 1]
    f = torch.sqrt(fy**2 + fx**2).clamp_min(1.0)
    m = 1.0 / f**decay
    return m / m.pow(2).mean().sqrt()


# the square root of natural images' RGB colour correlation (as in Lucid / MACO): the optimised
# channels are decorrelated colour channels, most energy in luminance, mapped to RGB by this matrix
COLOUR_CORRELATION = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]
)  # [rgb, decorrelated channel]
COLOUR_CORRELATION = COLOUR_CORRELATION / COLOUR_CORRELATION.norm(dim=0).max()


class FourierImage(torch.nn.Module):
    """A `[1, 3, size, size]` image in (0, 1): fixed magnitude, learned phase and mean colour."""

    def __init__(self, size: int, seed: int = 0, decay: float = 1.0, contrast: float = 2.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.size, self.contrast = size, contrast
        self.register_buffer("magnitude", spectrum_magnitude(size, decay))
        self.phase = torch.nn.Parameter(
            (torch.rand(3, size, size // 2 + 1, generator=g) * 2 - 1) * torch.pi
        )  # [3, size, size // 2 + 1]
        self.colour = torch.nn.Parameter(torch.zeros(3))  # per-channel offset (pre-sigmoid)

    def forward(self) -> Tensor:
        spec = torch.polar(self.magnitude.expand_as(self.phase), self.phase)  # complex [3, y, fx]
        x = torch.fft.irfft2(spec, s=(self.size, self.size))  # [3, size, size]
        x = (x - x.mean(dim=(1, 2), keepdim=True)) / x.std(dim=(1, 2), keepdim=True).clamp_min(
            1e-8
        )  # standardised per channel: the magnitude constraint fixes the structure's energy
        x = torch.einsum("rc,cyx->ryx", COLOUR_CORRELATION, x)  # decorrelated -> RGB
        return torch.sigmoid(self.contrast * x + self.colour[:, None, None])[None]


def augment(img: Tensor, views: int, gen: torch.Generator, noise: float = 0.02) -> Tensor:
    """`views` random crops (80-100 % of the side, rescaled to the full size) of `img`
    `[1, 3, S, S]`, with Gaussian pixel noise: `[views, 3, S, S]`."""
    s = img.shape[-1]
    out = []
    for _ in range(views):
        side = int(s * (0.8 + 0.2 * float(torch.rand(1, generator=gen))))
        y, x = (int(torch.randint(0, s - side + 1, (1,), generator=gen)) for _ in range(2))
        crop = img[..., y : y + side, x : x + side]
        out.append(F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=False))
    v = torch.cat(out)
    return v + noise * torch.randn(v.shape, generator=gen)


@dataclass(frozen=True)
class Visualisation:
    """image: uint8-ready `[3, S, S]` in [0, 1]; objective: the score of the final image (no
    augmentation); history: the mean augmented score every step."""

    image: Tensor
    objective: float
    history: list[float]


def optimise(
    score: Callable[[Tensor], Tensor],
    size: int,
    *,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    views: int = DEFAULT_VIEWS,
    seed: int = 0,
) -> Visualisation:
    """Maximise `score(images [image, 3, S, S] in [0, 1]) -> [image]` over a `FourierImage`."""
    param = FourierImage(size, seed)
    opt = torch.optim.Adam(param.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        s = score(augment(param(), views, gen)).mean()
        (-s).backward()
        opt.step()
        history.append(float(s.detach()))
    with torch.no_grad():
        img = param()
        final = float(score(img)[0])
    return Visualisation(img[0].detach(), final, history)
