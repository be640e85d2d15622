"""Discoverable models: what --random-weights can build, "did you mean", subcommand usage
(issue 20, item 4)."""

import json

import pytest

from engine.cli import main
from engine.errors import UnsupportedModel, UserError
from engine.model import discovery, loading, parse_spec
from engine.model.cache import ARCHITECTURES, cache_dir
from engine.model.discovery import check_architecture, did_you_mean, random_weight_architectures


@pytest.mark.slow  # the first listing builds every architecture on the meta device (then cached)
def test_random_weight_architectures_are_what_check_supported_accepts(monkeypatch):
    archs = random_weight_architectures()
    assert {"ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-S-32", "ViT-B-32-quickgelu"} <= set(archs)
    # attention-pooled timm towers (SigLIP) are decomposable and build stores
    assert {"ViT-B-16-SigLIP", "ViT-B-16-SigLIP2"} <= set(archs)
    assert set(random_weight_architectures(stores=False)) == set(archs)
    refused = {
        "ViT-M-16-alt": "LayerScale",  # ls_1/ls_2
        "ViT-L-14-CLIPA": "pool_type 'avg'",
        "RN50": "ResNet",
        "coca_ViT-B-32": "attentional_pool",
    }
    for name, why in refused.items():
        assert name not in archs
        a = check_architecture(name)
        assert not a.usable and why in a.reason, (name, a.reason)
    # the one-layer meta-device check agrees with a full build at random init
    lm = loading.load_model("ViT-S-32", random_weights=True)
    assert lm.dims.n_layers == 12
    with pytest.raises(UnsupportedModel, match="LayerScale"):
        loading.load_model("ViT-M-16-alt", random_weights=True)
    # the answers are kept in the cache folder: a new process reads them, building nothing
    assert list(cache_dir(ARCHITECTURES).glob("*.json"))
    monkeypatch.setattr(discovery, "check_architecture", lambda n: pytest.fail("rebuilt"))
    assert discovery.list_architectures.__wrapped__() == discovery.list_architectures()


@pytest.mark.slow
def test_models_lists_the_random_weight_architectures(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    archs = random_weight_architectures()
    assert f"Architectures usable with --random-weights ({len(archs)};" in out
    listed = out.split("--random-weights (")[1].split("\n\n")[0]
    assert all(a in listed for a in archs) and "ViT-M-16-alt" not in listed
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["spec"] for r in rows if r.get("random_weights") and r["stores"]] == archs


@pytest.mark.unit
@pytest.mark.parametrize(
    "spec, hint",
    [
        ("vit-b-32", "did you mean 'ViT-B-32'?"),
        ("ViT-B-32/opneai", "did you mean 'openai'?"),
        ("vit-b-32/openai", "did you mean 'ViT-B-32/openai'?"),
        ("ViT-B-23:/tmp/x.safetensors", "did you mean 'ViT-B-32'?"),
        ("demoo", "did you mean 'demo'?"),
    ],
)
def test_unknown_names_and_tags_get_did_you_mean(spec, hint, capsys):
    with pytest.raises(UserError, match=hint.replace("?", r"\?")):
        parse_spec(spec)
    assert main(["verify", "--model", spec, "--images", "synthetic:2"]) == 2
    err = capsys.readouterr().err
    assert hint in err and len(err.strip().splitlines()) == 1


@pytest.mark.unit
def test_did_you_mean_only_when_close():
    assert did_you_mean("zzzz", ["ViT-B-32"]) == ""
    assert did_you_mean("VIT-L-14", ["ViT-L-14", "ViT-L-16"]) == " (did you mean 'ViT-L-14'?)"


@pytest.mark.unit
def test_a_bad_flag_prints_the_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as e:
        main(["scores", "--store", "x", "--bogus"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("usage: clip-interpret scores") and "unrecognized arguments: --bogus" in err
    )
    assert "clip-interpret scores: error" in err
    with pytest.raises(SystemExit):  # no subcommand: the top-level usage, as before
        main(["--bogus"])
    assert capsys.readouterr().err.startswith("usage: clip-interpret [-h]")


@pytest.mark.unit
def test_the_projects_own_configs_are_not_listed(monkeypatch, capsys):
    """The demo's and the test models' configs are registered with open_clip (so they build)
    but are not architectures for users: `models` never lists them."""
    own = discovery.project_configs()
    assert {"ClipInterpretTiny", "ClipInterpretTinySigLIP"} <= own
    rows = (
        discovery.Architecture("ViT-B-32", True),
        discovery.Architecture("ClipInterpretTiny", True),
        discovery.Architecture("ClipInterpretTinySigLIP", True, stores=False),
        discovery.Architecture("ViT-B-16-SigLIP", True, stores=False),
    )
    monkeypatch.setattr(discovery, "list_architectures", lambda: rows)
    assert random_weight_architectures() == ["ViT-B-32"]
    assert random_weight_architectures(stores=False) == ["ViT-B-32", "ViT-B-16-SigLIP"]
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert not any(name in out for name in own)
    assert main(["models", "--json"]) == 0
    specs = {r["spec"] for r in json.loads(capsys.readouterr().out)}
    assert not specs & own and "tiny-test" in specs
