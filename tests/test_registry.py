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
    assert specs.parse_spec("demo-biased").path.endswith("demo_model_biased")
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
def test_paper_models_are_named_entries(capsys, few_architectures):
    """The `models` command lists the paper's six (from engine.sources.reference), then ours."""
    from engine.cli import main

    assert main(["models", "--json"]) == 0
    rows = {x["spec"]: x for x in json.loads(capsys.readouterr().out)}
    paper = {s for s, x in rows.items() if x["paper"]}
    assert paper == {
        "ViT-B-32/openai",
        "ViT-B-32/datacomp_m_s128m_b4k",
        "ViT-B-16/openai",
        "ViT-B-16/laion2b_s34b_b88k",
        "ViT-L-14/openai",
        "ViT-L-14/laion2b_s32b_b82k",
    }
    assert rows["ViT-B-32/openai"]["description"] == "paper model; OpenAI-400M"
    assert rows["tiny-test"]["available"] and not rows["tiny-test"]["paper"]
    bundled = {m.spec for m in specs.MODELS}
    assert {"demo", "demo-biased", "tiny-test"} <= bundled
    assert all(s in ("demo", "demo-biased", "tiny-test") or "SigLIP" in s for s in bundled)


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
    specs._open_clip()  # registers our model configs with open_clip
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
@pytest.mark.parametrize(
    "vision, names",
    [
        ({"qk_norm": True}, "attn.ln_k, attn.ln_q"),
        ({"qk_norm": True, "norm_kwargs": {"elementwise_affine": False}}, "attn.ln_k, attn.ln_q"),
        ({"scaled_cosine_attn": True}, "attn.logit_scale"),
        ({"scale_heads": True}, "attn.head_scale"),
        ({"scale_attn_inner": True}, "attn.ln_inner"),
        ({"scale_attn": True}, "ln_attn"),
        ({"scale_fc": True}, "mlp.ln"),
        ({"block_type": "custom", "ls_init_value": 0.1}, "ls_1, ls_2"),
    ],
)
def test_custom_attention_options_are_refused_by_name(vision, names):
    """open_clip's CustomResidualAttentionBlock options change what a head computes (or add a
    term); a block is accepted only when its parameters and modules are exactly the plain
    block's, and the error names the unexpected ones."""
    cfg = _tiny_cfg(**vision)
    model = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])
    assert type(model.visual.transformer.resblocks[0]).__name__ == "CustomResidualAttentionBlock"
    with pytest.raises(UnsupportedModel, match=f"block 0 .*does not know: {names}"):
        loading.check_supported(model, "x")


@pytest.mark.unit
def test_plain_custom_block_is_accepted_and_exact():
    """The custom block with no option enabled computes the plain block: accepted, and exact."""
    from engine.model.capture import decompose_images

    cfg = _tiny_cfg(block_type="custom")
    torch.manual_seed(0)
    model = open_clip.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"]).eval()
    loading.check_supported(model, "x")
    dec = decompose_images(model, torch.randn(2, 3, 32, 32), [1, 2])
    _, comps = dec.components()
    err = (comps.sum(1) - dec.output).abs().max() / dec.output.abs().max()
    assert err < 1e-5


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
def test_cli_verify_and_models_json(capsys, few_architectures):
    from engine.cli import main

    r = _cli("verify", "--model", "tiny-test", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] and out["relative_error"] < 1e-4
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"spec": "tiny-test"}.items() <= next(
        x for x in rows if x["spec"] == "tiny-test"
    ).items()
    archs = [x["spec"] for x in rows if x.get("random_weights")]
    assert archs == [a.name for a in few_architectures if a.usable]  # stores first, then verify


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
    row = specs.list_models([specs.ModelEntry("x", spec, "paper model", paper=True)])[0]
    assert row["available"] and row["where"].endswith("open_clip_model.safetensors")


def _local_dir(d: Path, seed: int) -> None:
    """An open_clip folder holding the tiny model's weights at random init `seed`."""
    d.mkdir(exist_ok=True)
    lm = loading.load_model("tiny-test", seed=seed)
    save_file(
        {k: v.contiguous() for k, v in lm.model.state_dict().items()},
        str(d / "open_clip_model.safetensors"),
    )
    cfg = open_clip.get_model_config(specs.TINY_ARCH)
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))


@pytest.mark.unit
def test_local_dir_weights_hash_follows_the_checkpoint(tmp_path):
    """Retrained weights in the same `local-dir:` folder give a new hash (a new build key), and
    interpret refuses a store built from the old weights."""
    from engine.pipeline.build import BuildParams, build_store
    from engine.pipeline.interpret import run_interpretation

    d = tmp_path / "model"
    _local_dir(d, seed=1)
    spec = f"local-dir:{d}"
    first = loading.load_model(spec).weights_hash
    assert first.startswith("sha256:") and first == loading.load_model(spec).weights_hash
    link = tmp_path / "artifacts" / "s"
    params = BuildParams(model=spec, images="synthetic:8", store=str(link), progress=False)
    build_store(params)
    _local_dir(d, seed=2)  # "retrained" in place
    second = loading.load_model(spec).weights_hash
    assert second.startswith("sha256:") and second != first
    assert not build_store(params).up_to_date  # a new build key: rebuilt, not "up to date"
    _local_dir(d, seed=3)
    with pytest.raises(
        UserError, match="weights of .* differ from the ones this store was built with"
    ):
        run_interpretation(link, progress=False)


@pytest.mark.unit
def test_local_dir_without_a_checkpoint_is_refused(tmp_path):
    d = tmp_path / "model"
    _local_dir(d, seed=1)
    (d / "open_clip_model.safetensors").unlink()
    with pytest.raises(WeightsMissing, match="no checkpoint file"):
        loading.weights_hash_of(f"local-dir:{d}")


@pytest.mark.unit
def test_load_model_changes_no_global_state():
    """No global seed, no logger level or filter changed (Streamlit loads models in threads)."""
    import logging

    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    root = logging.getLogger()
    levels = {n: logging.getLogger(n).level for n in ("", "huggingface_hub", "open_clip")}
    filters = list(root.filters)
    a = loading.load_model("tiny-test", seed=5)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: logging.getLogger(n).level for n in levels} == levels
    assert root.filters == filters
    torch.manual_seed(999)  # the random init depends on `seed` only, not on the global RNG
    b = loading.load_model("tiny-test", seed=5)
    c = loading.load_model("tiny-test", seed=6)
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.unit
def test_only_open_clip_records_are_silenced_during_a_load(caplog):
    import logging

    with caplog.at_level(logging.INFO), loading._quiet_open_clip():
        logging.getLogger("someone.else").info("kept")
        logging.info("kept too")  # the root logger, from outside open_clip
    assert [r.getMessage() for r in caplog.records] == ["kept", "kept too"]


@pytest.mark.unit
@pytest.mark.parametrize("cut", [0.5, 0.01])
def test_corrupt_checkpoint_is_named_in_one_line(tmp_path, cut):
    lm = loading.load_model("tiny-test")
    f = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in lm.model.state_dict().items()}, str(f))
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(UserError) as e:
        loading.load_model(f"{specs.TINY_ARCH}:{f}")
    assert not isinstance(e.value, WeightsMissing)
    assert f"cannot read the checkpoint {f}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.unit
@pytest.mark.parametrize(
    "error, match",
    [
        (RuntimeError("unexpected key in state_dict"), "does not fit"),
        (torch.OutOfMemoryError("CUDA out of memory"), "out of memory loading"),
        (RuntimeError("something else"), "could not load .*something else"),
    ],
)
def test_load_errors_say_what_happened(monkeypatch, tmp_path, error, match):
    """A RuntimeError with the weights on the machine is not 'weights missing'."""
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"x")
    monkeypatch.setattr(loading, "local_weights", lambda spec: str(f))
    oc = specs._open_clip()

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(oc, "create_model_and_transforms", fail)
    with pytest.raises(UserError, match=match) as e:
        loading.load_model("ViT-B-32/openai")
    assert not isinstance(e.value, WeightsMissing)
