"""Per-patch maps of neurons' second-order effects: the tokens' shares sum exactly to the lens's
effect along the direction (per neuron direction and shared), and the grid is the patches."""

import pytest
import torch

from engine.core import neuron_maps as nm
from engine.core import second_order as so
from engine.model import load_model, vision_weights
from engine.model.capture import capture_neurons, mlp_proj_weight

pytestmark = pytest.mark.exact


@pytest.fixture(scope="module")
def lens():
    lm = load_model("tiny-test")
    w = vision_weights(lm)
    s = lm.dims.image_size
    pixels = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(3))
    layer = 0
    cap, ncap = capture_neurons(lm, pixels, [], [layer])
    nb = so.neuron_bases(w, mlp_proj_weight(lm, layer), layer)
    c = so.coefficients(w, cap.attn_in, ncap.ln_std, ncap.acts[layer], nb.later)
    std = (cap.resid.float().var(-1, unbiased=False) + w.ln_post_eps).sqrt()
    return w, cap, ncap, nb, c, std, layer


def _paths(nb):
    u = nb.u.flatten(0, 1)  # [K, neuron, d_head], (later, head) row-major
    basis = nb.basis.flatten(0, 1)  # [K, d_head, d_embed]
    return u, basis


@pytest.mark.parametrize("shared", [False, True])
def test_token_shares_sum_to_the_effect_along_the_direction(lens, shared):
    w, cap, ncap, nb, c, std, layer = lens
    neurons = [0, 7, 100, 255]
    eff = so.effects(c, std, nb, neurons)  # [image, neuron, d_embed]
    g = torch.Generator().manual_seed(1)
    d = (
        torch.randn(eff.shape[-1], generator=g)
        if shared
        else torch.randn(4, eff.shape[-1], generator=g)
    )
    u, basis = _paths(nb)
    gains = nm.path_gains(u[:, neurons], basis, d)  # [K, neuron]
    tw = nm.token_weights(
        w, cap.attn_in, ncap.ln_std, ncap.acts[layer][..., neurons], std, nb.later, gains
    )  # [image, token, neuron]
    want = (eff * d).sum(-1)  # [image, neuron]
    got = tw.sum(1)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6 * float(eff.norm(dim=-1).max()))
    # a direction the neuron cannot write along gives zero everywhere
    zero = nm.token_weights(
        w,
        cap.attn_in,
        ncap.ln_std,
        ncap.acts[layer][..., neurons],
        std,
        nb.later,
        torch.zeros_like(gains),
    )
    assert float(zero.abs().max()) == 0.0


def test_patch_grid_is_the_patches_row_major():
    per_token = torch.arange(1 + 16, dtype=torch.float32)
    grid = nm.patch_grid(per_token)
    assert grid.shape == (4, 4) and grid[0, 1] == 2 and grid[1, 0] == 5
    with pytest.raises(ValueError):
        nm.patch_grid(torch.zeros(1 + 15))
