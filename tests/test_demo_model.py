"""The bundled demo model: loads through open_clip's local-dir path and matches its model card."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.sources import world

pytestmark = pytest.mark.demo

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "engine" / "data" / "demo_model"


def _eval_module():
    spec = importlib.util.spec_from_file_location(
        "eval_demo_model", ROOT / "scripts/eval_demo_model.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ev():
    return _eval_module()


@pytest.fixture(scope="module")
def demo(ev):
    return ev.load_demo(MODEL_DIR)


@pytest.fixture(scope="module")
def card():
    return json.loads((MODEL_DIR / "metrics.json").read_text())


def test_checkpoint_is_small_and_config_is_decomposable(card):
    ckpt = MODEL_DIR / "open_clip_model.safetensors"
    assert ckpt.stat().st_size <= 25 * 2**20
    cfg = json.loads((MODEL_DIR / "open_clip_config.json").read_text())["model_cfg"]
    registered = json.loads((ROOT / "engine/data/model_configs/demo-world-vit.json").read_text())
    assert cfg == registered == card["config"]
    v = cfg["vision_cfg"]
    assert v["image_size"] == world.IMAGE_SIZE
    assert v.get("pool_type", "tok") == "tok" and not v.get("attentional_pool", False)
    assert v.get("ls_init_value") is None and v.get("patch_dropout", 0) == 0


def test_demo_loads_via_open_clip_local_dir(demo):
    import open_clip

    model, preprocess, tokenizer = demo
    assert isinstance(model, open_clip.CLIP)
    assert model.visual.attn_pool is None
    tokens = tokenizer(["a red circle in the top left"])
    assert tokens.shape == (1, model.context_length)
    # open_clip's preprocess on a world image equals the training normalisation
    from PIL import Image

    ev = _eval_module()
    img = world.generate(0, 1, seed=3).images
    direct = ev.pixels_from_images(img)[0]
    via = preprocess(Image.fromarray(img[0]))
    torch.testing.assert_close(via, direct, atol=1e-5, rtol=0)


def test_registered_config_builds_the_same_architecture(demo):
    import open_clip

    open_clip.add_model_config(ROOT / "engine/data/model_configs")
    fresh = open_clip.create_model("demo-world-vit", pretrained=None)
    model = demo[0]
    assert fresh.state_dict().keys() == model.state_dict().keys()
    for k, v in fresh.state_dict().items():
        assert v.shape == model.state_dict()[k].shape, k


def test_zero_shot_matches_model_card(ev, demo, card):
    """A quick zero-shot check on 300 held-out images agrees with the card's 2,000-image numbers."""
    model, _, tokenizer = demo
    batch = world.generate(0, 300, seed=card["eval_seed"])
    emb = ev.encode_images(model, ev.pixels_from_images(batch.images))
    acc = ev.zero_shot(
        emb, ev.factor_text_embeddings(model, tokenizer), batch.codes.astype(np.int64)
    )
    for f, (a, chance) in acc.items():
        recorded = card["zero_shot"][f]["accuracy"]
        # binomial std at n=300 is at most 0.029; allow ~3.5 std
        assert abs(a - recorded) <= 0.1, (f, a, recorded)
        assert a > chance, (f, a, chance)


def test_head_contributions_sum_to_attention_output(ev, demo):
    """The hook-based per-head contributions of each layer add up to that layer's attention
    output for the class token (less the out_proj bias), mapped through the linearised ln_post
    and proj: an exact identity, checked against open_clip's own MultiheadAttention."""
    model, _, _ = demo
    vis = model.visual
    pixels = ev.pixels_from_images(world.generate(0, 6, seed=9).images)
    heads = ev.head_contributions(model, pixels)  # [image, layer, head, d_embed]
    blocks = list(vis.transformer.resblocks)
    assert heads.shape[:3] == (6, len(blocks), blocks[0].attn.num_heads)
    attn_out, final = [], []
    hooks = [b.attn.register_forward_hook(lambda m, i, o: attn_out.append(o[0])) for b in blocks]
    hooks.append(vis.ln_post.register_forward_hook(lambda m, i, o: final.append(i[0])))
    with torch.no_grad():
        try:
            model.encode_image(pixels)
        finally:
            for h in hooks:
                h.remove()
    resid = final[0][:, 0]  # [image, d_model]
    std = (resid.var(-1, unbiased=False) + vis.ln_post.eps).sqrt()
    for layer, (blk, out) in enumerate(zip(blocks, attn_out, strict=True)):
        x = out[:, 0] - blk.attn.out_proj.bias  # [image, d_model]
        x = x - x.mean(-1, keepdim=True)
        expected = (x / std[:, None]) * vis.ln_post.weight @ vis.proj  # [image, d_embed]
        torch.testing.assert_close(heads[:, layer].sum(1), expected, atol=1e-5, rtol=1e-4)


def _train_module():
    spec = importlib.util.spec_from_file_location(
        "train_demo_model", ROOT / "scripts/train_demo_model.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_caption_agreement_marks_true_positives():
    tr = _train_module()
    batch = world.generate(0, 64, seed=4)
    pos = tr.agreement(batch.captions, batch.codes)
    assert pos.shape == (64, 64) and pos.diagonal().all()
    for i, j in [(0, 1), (5, 9), (10, 3), (40, 41)]:
        named = world.parse_caption(batch.captions[j])
        agrees = all(batch.codes[i, world.FACTOR_NAMES.index(f)] == c for f, c in named.items())
        assert bool(pos[i, j]) == agrees


@pytest.mark.unit
def test_training_is_deterministic(tmp_path):
    """Two short runs from the same seed give bit-identical losses and weights."""
    tr = _train_module()

    def run():
        torch.manual_seed(0)
        model, tok = tr.create_model(tr.build_config({}), tmp_path)
        losses = tr.train(model, tok, steps=2, batch_size=16, lr=1e-3, warmup=1, wd=0.1)
        return losses, model.state_dict()

    (l1, s1), (l2, s2) = run(), run()
    assert l1 == l2 and all(np.isfinite(l1))
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k


def test_head_specialisation_matches_model_card(ev, demo, card):
    """η² of each head's direct contribution, on 500 held-out images, agrees with the card; the
    heads the card calls dominant still are (η² >= 0.45), for at least four factors."""
    model, _, _ = demo
    batch = world.generate(0, 500, seed=card["eval_seed"])
    contrib = ev.head_contributions(model, ev.pixels_from_images(batch.images))
    eta = ev.eta_squared(contrib, batch.codes.astype(np.int64))  # [layer, head, factor]
    recorded = np.array(card["eta2"])
    assert eta.shape == recorded.shape
    assert np.abs(eta - recorded).max() < 0.1
    names = list(world.FACTORS)
    seen = set()
    for h in card["specialisation"]["heads"]:
        if h["factor"]:
            layer, head = (int(x) for x in h["head"][1:].split("H"))
            assert eta[layer, head, names.index(h["factor"])] >= 0.45, h
            seen.add(h["factor"])
    assert len(seen) >= 4


def test_demo_loads_through_the_registry():
    from engine.model import encode_text, load_model

    lm = load_model("demo")
    assert lm.dims.image_size == world.IMAGE_SIZE
    assert lm.dims.n_layers == 8 and lm.dims.d_embed == 64
    emb = encode_text(lm, ["a red circle", "a photo of a dog"])
    assert emb.shape == (2, 64)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
