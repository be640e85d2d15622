"""Model registry: specs, real loading paths (file, local-dir), refusals, CLI errors."""

import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from engine.errors import UnsupportedModel, UserError, WeightsMissing
from engine.model import loading, specs

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, env_extra=None):
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True, env=env
    )


@pytest.mark.unit
def test_parse_specs():
    assert specs.parse_spec("demo").kind == "demo"
    assert specs.parse_spec("tiny-test").kind == "tiny"
    s = specs.parse_spec("ViT-B-32/openai")
    assert (s.kind, s.arch, s.tag) == ("tag", "ViT-B-32", "openai")
    assert specs.parse_spec("ViT-L-14/laion2b_s32b_b82k").tag == "laion2b_s32b_b82k"
    assert specs.parse_spec("hf-hub:org/repo").kind == "hf-hub"
    assert specs.parse_spec("ViT-B-16").kind == "arch"


@pytest.mark.unit
@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "empty model spec"),
        ("nonsense", "unknown model"),
        ("ViT-B-32/nope", "unknown pretrained tag 'nope' for ViT-B-32; valid: openai"),
        ("ViT-Q-99/openai", "unknown architecture"),
        ("ViT-B-32:/no/such/file.safetensors", "checkpoint file not found"),
        ("local-dir:/no/such/dir", "local-dir folder not found"),
    ],
)
def test_bad_specs_name_the_problem(spec, match):
    with pytest.raises(UserError, match=match):
        specs.parse_spec(spec)


@pytest.mark.unit
def test_paper_models_are_named_entries():
    paper = {m.spec for m in specs.MODELS if m.paper}
    assert paper == {
        "ViT-B-32/openai",
        "ViT-B-32/datacomp_m_s128m_b4k",
        "ViT-B-16/openai",
        "ViT-B-16/laion2b_s34b_b88k",
        "ViT-L-14/openai",
        "ViT-L-14/laion2b_s32b_b82k",
    }
    rows = {r["spec"]: r for r in specs.list_models()}
    assert rows["tiny-test"]["available"]


@pytest.mark.unit
def test_missing_weights_offline_is_a_clear_error():
    with pytest.raises(WeightsMissing, match="--model ViT-B-32:/path/to"):
        loading.load_model("ViT-B-32/openai")


@pytest.mark.unit
def test_arch_without_weights_needs_random_flag():
    with pytest.raises(UserError, match="random-weights"):
        loading.load_model("ViT-B-32")


@pytest.mark.unit
def test_openai_tags_load_with_quickgelu_others_without():
    lm = loading.load_model("ViT-B-32/openai", random_weights=True)
    act = lm.model.visual.transformer.resblocks[0].mlp.gelu
    assert lm.quick_gelu and type(act).__name__ == "QuickGELU"
    lm2 = loading.load_model("ViT-B-32/datacomp_m_s128m_b4k", random_weights=True)
    assert not lm2.quick_gelu
    assert type(lm2.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "GELU"


@pytest.mark.unit
def test_checkpoint_file_and_local_dir_round_trip(tmp_path):
    """Weights saved to disk load back through `ARCH:/file` and `local-dir:` identically."""
    ref = loading.load_model("tiny-test", seed=7)
    sd = {k: v.contiguous() for k, v in ref.model.state_dict().items()}
    f = tmp_path / "tiny.safetensors"
    save_file(sd, str(f))
    by_file = loading.load_model(f"{specs.TINY_ARCH}:{f}")
    d = tmp_path / "dir"
    d.mkdir()
    save_file(sd, str(d / "open_clip_model.safetensors"))
    cfg = open_clip.get_model_config(specs.TINY_ARCH)
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    by_dir = loading.load_model(f"local-dir:{d}")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = ref.model.encode_image(x)
        assert torch.allclose(by_file.model.encode_image(x), want, atol=1e-6)
        assert torch.allclose(by_dir.model.encode_image(x), want, atol=1e-6)
    assert by_file.weights_hash.startswith("sha256:")
    assert by_file.weights_hash != loading.load_model("tiny-test").weights_hash


def _tiny_cfg(**vision):
    cfg = json.loads(json.dumps(open_clip.get_model_config(specs.TINY_ARCH)))
    cfg["vision_cfg"].update(vision)
    return cfg


@pytest.mark.unit
@pytest.mark.parametrize(
    "vision, match",
    [
        ({"ls_init_value": 0.1}, "LayerScale"),
        ({"attentional_pool": True, "attn_pooler_heads": 4}, "attention pooling"),
        ({"pool_type": "avg"}, "pool_type"),
    ],
)
def test_unsupported_vits_are_refused(vision, match):
    cfg = _tiny_cfg(**vision)
    model = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
    with pytest.raises(UnsupportedModel, match=match):
        loading.check_supported(model, "x")


@pytest.mark.unit
def test_non_vit_is_refused():
    with pytest.raises(UnsupportedModel, match="non-ViT"):
        loading.load_model("RN50", random_weights=True)


@pytest.mark.unit
def test_cli_errors_exit_2_without_traceback():
    r = _cli("verify", "--model", "ViT-B-32/openai")
    assert r.returncode == 2
    assert r.stderr.startswith("error: weights for ViT-B-32/openai")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _cli("verify", "--model", "bogus")
    assert r.returncode == 2 and "unknown model 'bogus'" in r.stderr
    r = _cli("verify", "--model", "tiny-test", "--images", "/no/such/folder")
    assert r.returncode == 2 and "image folder not found" in r.stderr


@pytest.mark.unit
def test_cli_verify_and_models_json():
    r = _cli("verify", "--model", "tiny-test", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["relative_error"] < 1e-4
    r = _cli("models", "--json")
    assert r.returncode == 0
    assert {"spec": "tiny-test"}.items() <= next(
        x for x in json.loads(r.stdout) if x["spec"] == "tiny-test"
    ).items()


@pytest.mark.unit
def test_cli_verify_on_an_image_folder(tmp_path):
    from PIL import Image

    for i, colour in enumerate(["red", "green"]):
        Image.new("RGB", (40, 30), colour).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    r = _cli("verify", "--model", "tiny-test", "--images", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["images"].startswith("2 images") and out["ok"]


@pytest.mark.unit
def test_weights_in_the_hub_cache_count_as_local(tmp_path, monkeypatch):
    """A checkpoint already in the Hugging Face cache makes a paper model available offline."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    spec = "ViT-B-32/datacomp_m_s128m_b4k"  # open_clip: hf_hub 'laion/CLIP-ViT-B-32-DataComp.M-s128M-b4K/'
    assert specs.local_weights(spec) is None
    repo = tmp_path / "models--laion--CLIP-ViT-B-32-DataComp.M-s128M-b4K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    assert specs.local_weights(spec) == str(snap / "open_clip_model.safetensors")
    row = next(r for r in specs.list_models() if r["spec"] == spec)
    assert row["available"]
