"""The second-order neuron lens: the factorisation equals a brute-force propagation of each
neuron's write through the real attention modules with frozen patterns and LayerNorm scales."""

import numpy as np
import pytest
import torch

from engine.core import second_order as so
from engine.core.decompose import head_bases, ln_projection
from engine.model import load_model, vision_weights
from engine.model.capture import capture_neurons, mlp_proj_weight
from engine.model.neuron_check import propagate_write

REL_TOL = 1e-5  # fp32: max |factorised - brute force| / max ||brute force||


def _pixels(lm, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = lm.dims.image_size
    return torch.randn(n, 3, s, s, generator=g)


def _std(w, cap):
    resid = cap.resid.float()
    return (resid.var(dim=-1, unbiased=False) + w.ln_post_eps).sqrt()


def brute_force(lm, cap, ncap, layer, write):
    return propagate_write(lm, cap, ncap.ln_std, layer, write)


def _check_model(lm, layer, neurons, n_images=2):
    w = vision_weights(lm)
    pixels = _pixels(lm, n_images)
    cap, ncap = capture_neurons(lm, pixels, [], [layer])
    nb = so.neuron_bases(w, mlp_proj_weight(lm, layer), layer)
    c = so.coefficients(w, cap.attn_in, ncap.ln_std, ncap.acts[layer], nb.later)
    std = _std(w, cap)
    ours = so.effects(c, std, nb, neurons)  # [image, neuron, d_embed]
    w_proj = mlp_proj_weight(lm, layer).float()
    brute = torch.stack(
        [
            brute_force(lm, cap, ncap, layer, ncap.acts[layer][..., n, None] * w_proj[:, n])
            for n in neurons
        ],
        dim=1,
    )
    err = float((ours - brute).abs().max() / brute.norm(dim=-1).max())
    assert err < REL_TOL, err
    # the whole layer: Σ_n effect_n == the layer's write propagated (the reference's identity)
    all_effects = so.effects(c, std, nb).sum(dim=1)
    whole = brute_force(lm, cap, ncap, layer, ncap.written[layer])
    err_sum = float((all_effects - whole).abs().max() / whole.norm(dim=-1).max())
    assert err_sum < REL_TOL, err_sum
    hb = head_bases(w, nb.later)
    total = so.layer_total(
        w, cap.attn_in, ncap.ln_std, ncap.written[layer], std, nb, hb.value_to_coord
    )
    assert float((total - whole).abs().max() / whole.norm(dim=-1).max()) < REL_TOL
    return w, cap, ncap, nb, c, std


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-test")


@pytest.mark.unit
def test_factorisation_equals_brute_force_tiny(tiny):
    _check_model(tiny, 0, [0, 5, 17, 255])


@pytest.mark.unit
def test_write_is_the_mlp_output_minus_its_bias(tiny):
    w = vision_weights(tiny)
    cap, ncap = capture_neurons(tiny, _pixels(tiny), [2], [1])
    bias = tiny.model.visual.transformer.resblocks[1].mlp.c_proj.bias
    assert torch.allclose(ncap.written[1][:, 0] + bias, cap.mlp_out[:, 1], atol=1e-5)
    # and the capture's own decomposition is unchanged by the extra hooks
    assert sorted(cap.attn_in) == [2]
    assert torch.isfinite(cap.output).all() and w.n_layers == 3


@pytest.mark.unit
def test_frame_is_orthonormal_and_norms_are_exact(tiny):
    w, cap, ncap, nb, c, std = _check_model(tiny, 0, [3])
    k = so.frame_coords(c, std, nb.chol)  # [image, neuron, K]
    q = nb.frame()  # [neuron, K, d_embed]
    eff = so.effects(c, std, nb)
    assert torch.allclose(
        torch.einsum("ink,nke->ine", k, q), eff, atol=1e-5 * eff.norm(dim=-1).max()
    )
    gram = q @ q.transpose(1, 2)
    assert float((gram - torch.eye(nb.n_paths)).abs().max()) < 1e-4
    assert torch.allclose(k.norm(dim=-1), eff.norm(dim=-1), rtol=1e-4, atol=1e-6)
    # per-head coordinates sum back to the effect through the heads' bases
    hc = so.head_coords(c, std, nb, 3)  # [image, later, head, d_head]
    back = torch.einsum("ilhk,lhke->ie", hc, nb.basis)
    assert torch.allclose(back, eff[:, 3], atol=1e-5 * eff[:, 3].norm(dim=-1).max())


@pytest.mark.unit
def test_quantisation_stays_within_its_bound():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((5, 7, 12)).astype(np.float32) * rng.lognormal(0, 3, (5, 7, 1))
    k[0, 0] = 0.0  # a dead neuron
    k[1, 1] = 1e-9  # a subnormal scale
    q, scale = so.quantise(k)
    assert q.dtype == np.int8 and q.shape == (5, 12, 7) and scale.dtype == np.float16
    back = so.dequantise(q, scale)
    err = np.linalg.norm(back - k, axis=-1)
    assert (err <= so.quantisation_bound(scale, 12)).all()
    assert err.max() > 0  # it is lossy, and the bound is not vacuous:
    # √K / 254 of the norm, plus the subnormal slack
    assert (so.quantisation_bound(scale, 12) < 0.015 * np.linalg.norm(k, axis=-1) + 2e-5).all()


@pytest.mark.unit
def test_dead_neuron_gets_an_invertible_frame(tiny):
    w = vision_weights(tiny)
    w_proj = mlp_proj_weight(tiny, 0).clone()
    w_proj[:, 4] = 1.0  # constant column: LayerNorm's centring removes it entirely
    nb = so.neuron_bases(w, w_proj, 0)
    assert torch.isfinite(nb.chol).all() and float(nb.u[:, :, 4].abs().max()) < 1e-6
    assert torch.isfinite(nb.frame([4])).all()


@pytest.mark.unit
def test_last_layer_has_no_second_order_effect(tiny):
    with pytest.raises(ValueError, match="last block"):
        so.neuron_bases(vision_weights(tiny), mlp_proj_weight(tiny, 2), 2)


@pytest.mark.unit
def test_direct_effect_is_the_mlp_class_token_term(tiny):
    w = vision_weights(tiny)
    cap, ncap = capture_neurons(tiny, _pixels(tiny), [], [1])
    std = _std(w, cap)
    P = ln_projection(w)
    direct = so.direct_effect(ncap.acts[1][:, 0], mlp_proj_weight(tiny, 1), P, std)
    bias = tiny.model.visual.transformer.resblocks[1].mlp.c_proj.bias
    mlp_term = cap.mlp_out[:, 1] @ P / std[:, None]
    assert torch.allclose(direct.sum(1) + (bias @ P) / std[:, None], mlp_term, atol=1e-5)


@pytest.mark.exact
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-B-16"])
def test_real_architectures_factorise_exactly(arch):
    torch.manual_seed(0)
    lm = load_model(f"{arch}/openai", random_weights=True)
    _check_model(lm, 8, [0, 1234, 3071], n_images=1)


@pytest.mark.exact
@pytest.mark.demo
def test_demo_model_factorises_exactly():
    lm = load_model("demo")
    for layer in (0, 5):
        _check_model(lm, layer, [0, 7, 100, 255])
