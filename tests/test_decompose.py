"""The decomposition sums to the model's own `encode_image` (TransformerLens' remainder test)."""

import pytest
import torch

from engine.core.decompose import decompose, head_projection, ln_projection, patch_maps
from engine.core.layers import parse_layers
from engine.model import capture, decompose_images, load_model, vision_weights

TOL = 1e-4  # max |remainder| / max ||output||


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-test")


def _pixels(lm, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = lm.dims.image_size
    return torch.randn(n, 3, s, s, generator=g)


@pytest.mark.unit
def test_components_sum_to_encode_image_tiny(tiny):
    d = decompose_images(tiny, _pixels(tiny), layers=[1, 2])
    labels, comps = d.components()
    assert comps.shape[:2] == (3, len(labels))
    assert d.relative_error() < TOL
    # and the remainder really is the gap: perturbing one head breaks the identity
    d.head_out[:, 0, 0] += 0.1 * d.output.norm(dim=-1, keepdim=True)
    assert d.relative_error() > 1e-3


@pytest.mark.unit
def test_head_terms_match_module_attention(tiny):
    """Our per-head math (from in_proj_weight/out_proj) reproduces the attention module's output."""
    x = _pixels(tiny)
    cap = capture(tiny, x, [0, 1, 2])
    w = vision_weights(tiny)
    d = decompose(w, cap, [0, 1, 2])
    P = ln_projection(w)
    for l in range(3):
        module = (cap.attn_out[:, l] - w.b_out[l]) @ P / d.resid_std[:, None]
        ours = d.head_out[:, l].sum(dim=1)
        assert torch.allclose(ours, module, atol=1e-5, rtol=1e-4)


@pytest.mark.unit
def test_layer_choice_does_not_change_the_total(tiny):
    x = _pixels(tiny)
    a = decompose_images(tiny, x, [2])
    b = decompose_images(tiny, x, [0, 1, 2])
    assert torch.allclose(a.total(), b.total(), atol=1e-5)
    assert torch.allclose(a.head_out[:, 0], b.head_out[:, 2], atol=1e-6)
    assert a.head_out.shape == (3, 1, tiny.dims.n_heads, tiny.dims.d_embed)


@pytest.mark.unit
def test_batch_independence(tiny):
    """A head's contribution for one image does not depend on the rest of its batch."""
    x = _pixels(tiny, n=4)
    full = decompose_images(tiny, x, [1, 2]).head_out
    one = decompose_images(tiny, x[2:3], [1, 2]).head_out
    assert torch.allclose(full[2:3], one, atol=1e-5)


@pytest.mark.unit
def test_patch_maps_sum_to_head_contribution(tiny):
    x = _pixels(tiny)
    cap = capture(tiny, x, [1, 2])
    w = vision_weights(tiny)
    d = decompose(w, cap, [1, 2])
    u = torch.randn(tiny.dims.d_embed)
    maps, cls = patch_maps(w, cap, 1, [1, 2], [0, 3], u, return_cls=True)
    g = tiny.dims.grid
    assert maps.shape == (2, 2, g, g)
    want = d.head_out[1][:, [0, 3]] @ u  # [layer, head]
    assert torch.allclose(maps.sum(dim=(-1, -2)) + cls, want, atol=1e-5)


@pytest.mark.unit
def test_patch_map_localises_a_planted_patch(tiny):
    """A patch that alone differs from a flat image is where a head's map changes most."""
    s, p = tiny.dims.image_size, tiny.dims.patch_size
    flat = torch.zeros(1, 3, s, s)
    spot = flat.clone()
    spot[:, :, p : 2 * p, 2 * p : 3 * p] = 3.0  # grid cell (row 1, col 2)
    w = vision_weights(tiny)
    u = torch.randn(tiny.dims.d_embed)
    # layer 0: its values are per-token functions of the token, so only that cell's value moves
    m0 = patch_maps(w, capture(tiny, flat, [0]), 0, [0], None, u)
    m1 = patch_maps(w, capture(tiny, spot, [0]), 0, [0], None, u)
    value_change = (m1 - m0).abs().sum(dim=(0, 1))  # [grid, grid]
    assert divmod(int(value_change.argmax()), tiny.dims.grid) == (1, 2)


@pytest.mark.unit
def test_head_projection_shape(tiny):
    w = vision_weights(tiny)
    W = head_projection(w, 0, ln_projection(w))
    assert W.shape == (tiny.dims.n_heads, tiny.dims.d_head, tiny.dims.d_embed)


@pytest.mark.unit
def test_uncaptured_layer_is_an_error(tiny):
    cap = capture(tiny, _pixels(tiny), [2])
    with pytest.raises(ValueError, match="not captured"):
        decompose(vision_weights(tiny), cap, [1, 2])


@pytest.mark.exact
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_real_architectures_sum_exactly(arch):
    """The three paper architectures at random init (fp32, CPU), several images, all layers."""
    lm = load_model(f"{arch}/openai", random_weights=True)
    assert lm.quick_gelu  # OpenAI weights were trained with QuickGELU
    x = _pixels(lm, n=3)
    d = decompose_images(lm, x, layers=parse_layers("all", lm.dims.n_layers))
    assert d.head_out.shape == (3, lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_embed)
    assert d.relative_error() < TOL
    # the model's own forward, not our capture, is the reference
    with torch.no_grad():
        ref = lm.model.encode_image(x)
    assert (ref - d.total()).abs().max() / ref.norm(dim=-1).max() < TOL


@pytest.mark.demo
def test_demo_model_sums_exactly():
    lm = load_model("demo")
    x = _pixels(lm, n=4)
    d = decompose_images(lm, x, layers=parse_layers("all", lm.dims.n_layers))
    assert d.relative_error() < TOL
