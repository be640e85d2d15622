"""The decomposition sums to the model's own `encode_image` (TransformerLens' remainder test)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.decompose import (
    decompose,
    head_bases,
    head_projection,
    head_svd,
    ln_projection,
    patch_maps,
)
from engine.core.layers import parse_layers
from engine.model import capture, decompose_images, load_model, vision_weights

TOL = 1e-4  # max |remainder| / max ||output||
COORD_TOL = 1e-5  # coord @ basis vs the d_embed computation, relative, fp32


def dense_head_out(w, cap, layers):
    """The previous implementation, in embedding space (the oracle for coordinates): keys and
    values of every token, the class-token pattern, the value mix, then W[l, h] = W_O[h] @ P,
    / std. [image, layer, head, d_embed]."""
    P = ln_projection(w)
    resid = cap.resid.float()
    inv = 1.0 / (resid.var(dim=-1, unbiased=False) + w.ln_post_eps).sqrt()
    out = []
    for l in layers:
        x = cap.attn_in[l].float()
        n, t, d = x.shape
        hd = d // w.n_heads
        w_q, w_k, w_v = w.w_in[l].float().split(d)
        b_q, b_k, b_v = w.b_in[l].float().split(d)
        q = (x[:, 0] @ w_q.T + b_q).reshape(n, w.n_heads, 1, hd)
        k = (x @ w_k.T + b_k).reshape(n, t, w.n_heads, hd).transpose(1, 2)
        v = (x @ w_v.T + b_v).reshape(n, t, w.n_heads, hd).transpose(1, 2)
        pattern = ((q @ k.transpose(-1, -2)).squeeze(2) / hd**0.5).softmax(-1)
        z = (pattern[..., None] * v).sum(dim=2)  # [image, head, d_head]
        out.append(torch.einsum("ihd,hde->ihe", z, head_projection(w, l, P)) * inv[:, None, None])
    return torch.stack(out, dim=1)


def assert_coords_exact(w, cap, layers, d):
    """coord @ basis == the d_embed decomposition (relative to the largest contribution), the
    basis rows are orthonormal, and norms agree in coordinates."""
    dense = dense_head_out(w, cap, layers)
    ours = d.head_out
    scale = dense.norm(dim=-1).max()
    assert float((ours - dense).abs().max() / scale) < COORD_TOL
    b = d.basis.double()  # [layer, head, d_head, d_embed]
    gram = b @ b.transpose(-1, -2)
    eye = torch.diag_embed((torch.arange(b.shape[2]) < d.rank[..., None]).double())
    assert float((gram - eye).abs().max()) < 1e-6
    assert torch.allclose(d.coord.norm(dim=-1), dense.norm(dim=-1), rtol=1e-4, atol=1e-6 * scale)


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
    d.coord[:, 0, 0] += 0.1 * d.output.norm(dim=-1, keepdim=True)
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
        module = (cap.attn_out[:, l] - w.b_out[l]) @ P / d.std[:, None]
        ours = d.head_out[:, l].sum(dim=1)
        assert torch.allclose(ours, module, atol=1e-5, rtol=1e-4)


@pytest.mark.unit
def test_layer_choice_does_not_change_the_total(tiny):
    x = _pixels(tiny)
    a = decompose_images(tiny, x, [2])
    b = decompose_images(tiny, x, [0, 1, 2])
    assert torch.allclose(a.total(), b.total(), atol=1e-5)
    assert torch.allclose(a.head_out[:, 0], b.head_out[:, 2], atol=1e-6)
    assert a.coord.shape == (3, 1, tiny.dims.n_heads, tiny.dims.d_head)
    assert a.rest_layers == [0, 1] and a.attn_rest.shape == (3, 2, tiny.dims.d_embed)
    assert b.rest_layers == [] and b.attn_rest.shape == (3, 0, tiny.dims.d_embed)


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
    layers = parse_layers("all", lm.dims.n_layers)
    w = vision_weights(lm)
    cap = capture(lm, x, layers)
    d = decompose(w, cap, layers)
    assert d.coord.shape == (3, lm.dims.n_layers, lm.dims.n_heads, lm.dims.d_head)
    assert d.relative_error() < TOL
    assert_coords_exact(w, cap, layers, d)
    # the model's own forward, not our capture, is the reference
    with torch.no_grad():
        ref = lm.model.encode_image(x)
    assert (ref - d.total()).abs().max() / ref.norm(dim=-1).max() < TOL


@pytest.mark.demo
def test_demo_model_sums_exactly():
    lm = load_model("demo")
    x = _pixels(lm, n=4)
    layers = parse_layers("all", lm.dims.n_layers)
    w = vision_weights(lm)
    cap = capture(lm, x, layers)
    d = decompose(w, cap, layers)
    assert d.relative_error() < TOL
    assert_coords_exact(w, cap, layers, d)


@pytest.mark.unit
def test_coord_at_basis_is_the_d_embed_decomposition_tiny(tiny):
    x = _pixels(tiny, n=5)
    w = vision_weights(tiny)
    cap = capture(tiny, x, [0, 1, 2])
    d = decompose(w, cap, [0, 2])
    assert_coords_exact(w, cap, [0, 2], d)
    # the weights' part is computed once and reused: the same numbers with precomputed bases
    again = decompose(w, cap, [0, 2], bases=head_bases(w, [0, 2]))
    assert torch.equal(again.coord, d.coord)


@pytest.mark.unit
@settings(max_examples=25, deadline=None)
@given(
    n_heads=st.integers(1, 4),
    d_head=st.integers(1, 6),
    d_embed=st.integers(1, 12),
    dead=st.integers(0, 6),
    seed=st.integers(0, 2**16),
)
def test_head_svd_factorises_any_map_exactly(n_heads, d_head, d_embed, dead, seed):
    """x @ W == (x @ U S) @ Vᵀ for any [head, d_head, d_embed] map, also rank-deficient ones
    (d_head > d_embed, or dead value directions): zero rows past the rank, rank recorded."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n_heads, d_head, d_embed, generator=g, dtype=torch.float64)
    W[:, : min(dead, d_head)] = 0.0  # dead rows: rank drops
    us, basis, rank = head_svd(W)
    x = torch.randn(7, n_heads, d_head, generator=g, dtype=torch.float64)
    want = torch.einsum("ihd,hde->ihe", x, W)
    got = torch.einsum("ihk,hke->ihe", torch.einsum("ihd,hdk->ihk", x, us), basis)
    assert torch.allclose(got, want, atol=1e-10)
    expect_rank = min(max(d_head - min(dead, d_head), 0), d_embed)
    assert rank.tolist() == [expect_rank] * n_heads
    assert torch.all(basis[:, expect_rank:] == 0) and torch.all(us[:, :, expect_rank:] == 0)
    gram = basis @ basis.transpose(1, 2)
    assert torch.allclose(gram[:, :expect_rank, :expect_rank], torch.eye(expect_rank).double())


@pytest.mark.unit
@settings(max_examples=8, deadline=None)
@given(layers=st.sets(st.integers(0, 2), max_size=3), n=st.integers(1, 4), seed=st.integers(0, 99))
def test_components_sum_for_any_layer_choice(tiny, layers, n, seed):
    d = decompose_images(tiny, _pixels(tiny, n=n, seed=seed), sorted(layers))
    assert d.relative_error() < TOL
    assert sorted(d.layers + d.rest_layers) == [0, 1, 2]
    labels, comps = d.components()
    assert torch.allclose(comps.sum(dim=1), d.total(), atol=1e-5)


@pytest.mark.unit
def test_no_layers_chosen_creates_the_empty_heads_on_the_capture_device(tiny):
    """With no layers, the empty coordinates live where the capture lives (here: 'meta', a
    device other than the CPU that needs no accelerator)."""
    w = vision_weights(tiny)
    cap = capture(tiny, _pixels(tiny), [])
    meta = type(cap)(
        embed=cap.embed.to("meta"),
        attn_in={},
        attn_out=cap.attn_out.to("meta"),
        mlp_out=cap.mlp_out.to("meta"),
        resid=cap.resid.to("meta"),
        output=cap.output.to("meta"),
    )
    w_meta = type(w)(**{k: (v.to("meta") if torch.is_tensor(v) else v) for k, v in vars(w).items()})
    d = decompose(w_meta, meta, [])
    assert d.coord.shape == (3, 0, tiny.dims.n_heads, tiny.dims.d_head)
    assert d.coord.device.type == "meta" and d.attn_rest.device.type == "meta"
