"""SigLIP / SigLIP 2 (timm towers with attention pooling): the terms sum to encode_image exactly,
each head's term is what the head writes, pushed through the frozen pool; unsupported towers are
refused by the parameter that is unexpected.

Real architectures run at random init with 1-2 images (the machine is small and shared)."""

import gc
import json

import pytest
import torch

from engine.cli import main as cli_main
from engine.core.pooling import decompose_pooled, pool_pattern, pooled_bases
from engine.errors import UnsupportedModel, UserError
from engine.model import check_supported, decompose_images, load_model
from engine.model.timm_tower import (
    capture_pooled,
    pooled_weights,
    tiny_siglip_trunk,
)
from engine.model.tokenizers import STANDIN_NAME, StandInTokenizer, load_tokenizer

TOL = 1e-4  # max |remainder| / max ||output||, fp32
TINY = "ClipInterpretTinySigLIP"


def _pixels(lm, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = lm.dims.image_size
    return torch.randn(n, 3, s, s, generator=g)


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY, random_weights=True)


# ------------------------------------------------------------------------------ real configs


@pytest.mark.exact
@pytest.mark.parametrize(
    "arch, size, n_pool_heads",
    [("ViT-B-16-SigLIP", 224, 12), ("ViT-B-16-SigLIP2", 224, 12)],
)
def test_siglip_b16_sums_to_encode_image(arch, size, n_pool_heads):
    lm = load_model(arch, random_weights=True)
    try:
        assert lm.dims.image_size == size and lm.dims.n_layers == 12
        assert lm.extra["pooling"] == "map" and lm.extra["n_pool_heads"] == n_pool_heads
        assert lm.extra["tokenizer"] == STANDIN_NAME  # no transformers here: the stand-in
        pixels = _pixels(lm, 2)
        d = decompose_images(lm, pixels, range(12))
        assert d.relative_error() < TOL
        labels, comps = d.components()
        assert comps.shape == (2, len(labels), lm.dims.d_embed)
        assert {"pool_mlp", "pool_bias", "embed", "L11H0", "L0.mlp"} <= set(labels)
        assert torch.allclose(
            comps.sum(dim=1), d.output, atol=TOL * float(d.output.norm(dim=-1).max())
        )
        # a subset of layers: the same heads, the other layers as whole-attention terms
        sub = decompose_images(lm, pixels, [10, 11])
        assert sub.relative_error() < TOL
        assert torch.allclose(sub.coord, d.coord[:, 10:], atol=1e-5 * float(d.coord.abs().max()))
        # breaking one head breaks the identity (the check can fail)
        d.coord[:, 3, 2] += 0.1 * d.output.norm(dim=-1, keepdim=True)
        assert d.relative_error() > 1e-3
    finally:
        del lm
        gc.collect()


@pytest.mark.exact
@pytest.mark.slow
def test_siglip_so400m_sums_to_encode_image():
    lm = load_model("ViT-SO400M-14-SigLIP", random_weights=True)
    try:
        dims = lm.dims
        assert (dims.n_layers, dims.n_heads, dims.d_model, dims.d_head) == (27, 16, 1152, 72)
        assert (dims.image_size, dims.patch_size, dims.grid) == (224, 14, 16)
        d = decompose_images(lm, _pixels(lm, 1), [0, 13, 26])  # rest layers as whole terms
        assert d.relative_error() < TOL
        assert d.coord.shape == (1, 3, 16, dims.d_embed)
    finally:
        del lm
        gc.collect()


# -------------------------------------------------------------------------- tiny: the math


@torch.no_grad()
def _dense_head_terms(lm, pixels, layer):
    """Oracle, independent of the captured qkv: each head's per-token output recomputed from
    `norm1`'s output and the weights, pushed through the final LayerNorm's linearisation and
    the pool (frozen pattern) in d_embed: [image, head, d_embed]."""
    t = lm.model.visual.trunk
    seen = {}
    h1 = t.blocks[layer].norm1.register_forward_hook(lambda m, i, o: seen.__setitem__("x", o))
    h2 = t.norm.register_forward_pre_hook(lambda m, i: seen.__setitem__("resid", i[0]))
    h3 = t.attn_pool.kv.register_forward_hook(lambda m, i, o: seen.__setitem__("kv", o))
    try:
        lm.model.encode_image(pixels)
    finally:
        h1.remove(), h2.remove(), h3.remove()
    w = pooled_weights(lm.model)
    blk = t.blocks[layer]
    x = seen["x"].double()
    n, T, d = x.shape
    H, dh = w.n_heads, w.d_head
    q, k, v = (x @ blk.attn.qkv.weight.double().T + blk.attn.qkv.bias.double()).split(d, dim=-1)
    q, k, v = (z.reshape(n, T, H, dh).transpose(1, 2) for z in (q, k, v))
    A = (q @ k.transpose(-1, -2) / dh**0.5).softmax(-1)  # [image, head, t, s]
    mix = A @ v  # [image, head, token, d_head]
    W_O = blk.attn.proj.weight.double().T.reshape(H, dh, d)
    per_token = torch.einsum("nhtk,hkd->nhtd", mix, W_O)  # each head's output at each token
    resid = seen["resid"].double()
    std = (resid.var(-1, unbiased=False) + w.norm_eps).sqrt()  # [image, token]
    a = pool_pattern(w, seen["kv"].double())  # [image, g, token]
    G, dp = w.n_pool_heads, w.d_pool_head
    gamma = w.norm_weight.double()
    centred = per_token - per_token.mean(-1, keepdim=True)
    normed = centred * gamma / std[:, None, :, None]  # LN's linear part, per token
    vals = (normed @ w.pool_w_v.double().T).reshape(n, H, T, G, dp)  # pool values, no bias
    pooled = torch.einsum("ngt,nhtgp->nhgp", a, vals).reshape(n, H, G * dp)
    return pooled @ w.pool_w_proj.double().T  # [image, head, d_embed]


@pytest.mark.unit
def test_tiny_heads_match_dense_oracle(tiny):
    pixels = _pixels(tiny, 2)
    d = decompose_images(tiny, pixels, [1, 2])
    assert d.relative_error() < TOL
    for i, layer in enumerate([1, 2]):
        dense = _dense_head_terms(tiny, pixels, layer).float()
        ours = d.head_out[:, i]
        assert float((ours - dense).abs().max() / dense.norm(dim=-1).max()) < 1e-5


@pytest.mark.unit
def test_tiny_pool_views(tiny):
    """The per-pool-head view and the pool-MLP term agree with the model: Σ_g pool_heads + proj
    bias + pool_mlp = output, and pool_mlp = mlp(norm(y)) recomputed from the pooled vector."""
    pixels = _pixels(tiny, 2, seed=1)
    d = decompose_images(tiny, pixels, [0, 1, 2])
    pool = tiny.model.visual.trunk.attn_pool
    y = d.pool_heads.sum(dim=1) + pool.proj.bias
    assert torch.allclose(y + d.pool_mlp, d.output, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(pool.mlp(pool.norm(y)), d.pool_mlp, atol=1e-6)
    assert d.pool_pattern.shape == (2, pool.num_heads, tiny.dims.grid**2)
    assert torch.allclose(d.pool_pattern.sum(-1), torch.ones(2, pool.num_heads))
    share = d.pool_mlp_share()
    assert share.shape == (2,) and bool((share > 0).all())


@pytest.mark.unit
def test_tiny_batch_independent_and_precomputed_bases(tiny):
    pixels = _pixels(tiny, 2, seed=2)
    w = pooled_weights(tiny.model)
    both = decompose_pooled(w, capture_pooled(tiny.model, pixels, [2]), [2])
    one = decompose_pooled(
        w, capture_pooled(tiny.model, pixels[1:], [2]), [2], bases=pooled_bases(w)
    )
    assert torch.allclose(both.coord[1:], one.coord, atol=1e-6)
    basis = both.basis.double()
    assert torch.allclose(
        basis @ basis.T, torch.eye(basis.shape[0], dtype=torch.float64), atol=1e-6
    )


@pytest.mark.unit
def test_verify_cli_reports_error_for_tiny_siglip(capsys):
    assert cli_main(["verify", "--model", TINY, "--random-weights", "-n", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["relative_error"] < TOL
    assert 0 < out["pool_mlp_share"]  # ||pool_mlp|| / ||output||, mean over the images


# ------------------------------------------------------------------------------- refusals


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs, name, reason",
    [
        ({"qk_norm": True}, "attn.q_norm", "qk-norm"),
        ({"init_values": 1e-5}, "ls1", "LayerScale"),
        ({"reg_tokens": 1}, "reg_token", "register tokens"),
        ({"class_token": True}, "cls_token", "a class token"),
        ({"fc_norm": True}, "fc_norm", "a norm after pooling"),
    ],
)
def test_unsupported_timm_towers_are_refused_by_name(tiny, kwargs, name, reason):
    import copy

    model = copy.deepcopy(tiny.model)
    model.visual.trunk = tiny_siglip_trunk(num_classes=0, **kwargs)
    with pytest.raises(UnsupportedModel, match=name.replace(".", r"\.")) as e:
        check_supported(model, "variant")
    assert reason in str(e.value)


@pytest.mark.unit
def test_swiglu_and_other_pools_refused(tiny):
    import copy

    from timm.layers import SwiGLU

    model = copy.deepcopy(tiny.model)
    model.visual.trunk = tiny_siglip_trunk(num_classes=0, mlp_layer=SwiGLU)
    with pytest.raises(UnsupportedModel, match=r"mlp\.fc1_g.*SwiGLU"):
        check_supported(model, "variant")
    model.visual.trunk = tiny_siglip_trunk(num_classes=0, global_pool="avg", fc_norm=False)
    with pytest.raises(UnsupportedModel, match="global_pool='avg'"):
        check_supported(model, "variant")


@pytest.mark.unit
def test_open_clip_attentional_pool_refused_with_reason():
    """open_clip's own VisionTransformer with a CoCa-style attentional pooler: refused, saying
    why (not the timm MAP head this module decomposes)."""
    import open_clip

    from engine.model.specs import TINY_ARCH, _open_clip

    _open_clip()  # registers our configs
    cfg = json.loads(json.dumps(open_clip.get_model_config(TINY_ARCH)))
    cfg["vision_cfg"].update(attentional_pool=True, attn_pooler_heads=4)
    model = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
    with pytest.raises(UnsupportedModel, match="attentional_pool.*not implemented"):
        check_supported(model, "coca-like")


# ------------------------------------------------------------------------------- tokenizer


class _NoTokenizerOpenClip:
    @staticmethod
    def get_tokenizer(name):
        raise ModuleNotFoundError("No module named 'transformers'")


@pytest.mark.unit
def test_standin_tokenizer_only_with_random_weights(tiny):
    with pytest.raises(UserError, match="transformers"):
        load_tokenizer(_NoTokenizerOpenClip, "x", tiny.model, random_weights=False, spec="x")
    tok, name = load_tokenizer(_NoTokenizerOpenClip, "x", tiny.model, random_weights=True, spec="x")
    assert name == STANDIN_NAME and isinstance(tok, StandInTokenizer)
    ids = tok(["a red circle", "a red circle", ""])
    assert ids.shape == (3, tiny.model.context_length)
    assert torch.equal(ids[0], ids[1]) and int(ids[2].abs().sum()) == 0
    assert int(ids.max()) < tok.vocab_size and int(ids[0, :3].min()) >= 1


# ------------------------------------------------------------------------------- hf-hub


@pytest.mark.unit
def test_hf_hub_siglip_loads_from_the_local_cache(tiny, tmp_path, monkeypatch):
    """An `hf-hub:` SigLIP-shaped model whose config and weights are in the Hugging Face cache
    loads offline, with the weights of the cache (not a random init) and their hash."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from engine.model.specs import CONFIG_DIR

    snap = tmp_path / "hub" / "models--test--tiny-siglip" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (tmp_path / "hub" / "models--test--tiny-siglip" / "refs").mkdir()
    (tmp_path / "hub" / "models--test--tiny-siglip" / "refs" / "main").write_text("0" * 40)
    cfg = json.loads((CONFIG_DIR / f"{TINY}.json").read_text())
    (snap / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    other = load_model(TINY, random_weights=True, seed=7)  # weights unlike `tiny`'s
    state = {k: v.contiguous() for k, v in other.model.state_dict().items()}
    save_file(state, str(snap / "open_clip_model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = load_model("hf-hub:test/tiny-siglip")
    assert lm.weights_hash.startswith("sha256:")
    assert lm.extra["pooling"] == "map"
    pixels = _pixels(lm, 1)
    d = decompose_images(lm, pixels, [0, 1, 2])
    assert d.relative_error() < TOL
    ref = decompose_images(other, pixels, [0, 1, 2])
    assert torch.allclose(d.output, ref.output, atol=1e-6)


# ------------------------------------------------------------------------------- registry


@pytest.mark.unit
def test_registry_lists_siglip_models_with_pretrained_tags(
    capsys, few_architectures, empty_hf_cache
):
    from engine.model import parse_spec

    assert cli_main(["models", "--json"]) == 0
    rows = {r["spec"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ViT-B-16-SigLIP"]["random_weights"] and not rows["ViT-B-16-SigLIP"]["stores"]
    siglip = {s for s, r in rows.items() if "SigLIP" in s and not r.get("random_weights")}
    assert {
        "ViT-B-16-SigLIP/webli",
        "ViT-B-16-SigLIP2/webli",
        "ViT-SO400M-14-SigLIP/webli",
    } <= siglip
    for spec in siglip:
        s = parse_spec(spec)  # a real open_clip architecture and pretrained tag
        assert s.kind == "tag" and s.tag == "webli"
        assert not rows[spec]["available"]  # no weights on this machine


@pytest.mark.unit
def test_tiny_patch_maps_sum_to_head_contribution(tiny):
    from engine.core.pooling import pooled_patch_maps

    pixels = _pixels(tiny, 2, seed=3)
    w = pooled_weights(tiny.model)
    cap = capture_pooled(tiny.model, pixels, [1, 2])
    d = decompose_pooled(w, cap, [1, 2])
    u = torch.nn.functional.normalize(torch.randn(tiny.dims.d_embed), dim=0)
    maps = pooled_patch_maps(w, cap, 1, [1, 2], [0, 3], u)
    g = tiny.dims.grid
    assert maps.shape == (2, 2, g, g)
    want = d.head_out[1][:, [0, 3]] @ u  # [layer, head]
    assert torch.allclose(
        maps.sum(dim=(-1, -2)), want, atol=1e-5 * float(d.output.norm(dim=-1).max())
    )
    assert float(maps.abs().max()) > 0


@pytest.mark.unit
def test_class_token_weights_of_siglip_are_one_clear_refusal(tiny):
    from engine.model import vision_weights

    with pytest.raises(UnsupportedModel, match="attention-pooled tower .* pooled path"):
        vision_weights(tiny)


@pytest.mark.unit
def test_siglip_pretrained_tag_without_weights_is_a_clear_error(monkeypatch, empty_hf_cache):
    from engine.errors import WeightsMissing

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsMissing, match=r"ViT-B-16-SigLIP:/path/to"):
        load_model("ViT-B-16-SigLIP/webli")
