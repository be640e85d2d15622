"""`ablate` over a store: exact mean-ablation and zero-shot, CLI round trips, cached tasks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.cli import main
from engine.pipeline.ablate import AblateParams, run_ablate
from engine.pipeline.build import BuildParams, build_store
from engine.pipeline.interpret import run_interpretation
from engine.session import StoreSession
from engine.store import open_store
from engine.store.decomposition import load_components

pytestmark = [pytest.mark.slow, pytest.mark.demo]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    link = tmp_path_factory.mktemp("abl") / "artifacts" / "a"
    link.parent.mkdir()
    build_store(BuildParams(model="demo", images="synthetic:400", store=str(link), layers="all",
                            progress=False))  # fmt: skip
    run_interpretation(str(link), labeller="offline", bank="world", progress=False)
    return link


def test_the_stored_terms_sum_to_the_output(store):
    with open_store(store) as r:
        output, comps = load_components(r)
    total = comps.total()  # every term, constants included  [image, d_embed]
    err = np.abs(total - output).max() / np.linalg.norm(output, axis=1).max()
    assert err < 5e-3  # fp16 storage of the terms


def test_cli_round_trip_records_the_run_and_caches_the_tasks(store, capsys, monkeypatch):
    argv = ["ablate", "--store", str(store), "--ablate", "label:colour", "--random", "5", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert {t["task"] for t in out["tasks"]} == {
        "shape", "colour", "position", "texture", "size", "background"
    }  # fmt: skip
    assert out["n_fit"] + out["n_eval"] == 400 and len(out["random_draws"]) == 5
    colour = next(t for t in out["tasks"] if t["task"] == "colour")
    assert colour["before"] > 0.9 and len(colour["random"]) == 5
    with open_store(store) as r:
        runs = r.query("SELECT * FROM ablation_runs")
        res = r.query("SELECT * FROM ablation_results")
        classes = r.query("SELECT task, count(*) AS n FROM zeroshot_classes GROUP BY task")
        kinds = set(r.query("SELECT kind FROM runs")["kind"])
    assert len(runs) == 1 and runs.spec[0] == "label:colour" and len(res) == 6
    assert dict(zip(classes.task, classes.n, strict=True))["colour"] == 6
    assert "ablate" in kinds
    # a second run reads the cached class embeddings: the model is not needed
    monkeypatch.setattr(StoreSession, "text_embeddings", lambda *a, **k: pytest.fail("re-encoded"))
    again = run_ablate(AblateParams(str(store), "label:colour", random=5, write=False))
    assert again.result.to_dict()["tasks"] == out["tasks"]


def test_nothing_ablated_changes_nothing_and_everything_gives_the_mean(store):
    none = run_ablate(AblateParams(str(store), "none", random=0, write=False)).result
    for t in none.tasks:
        assert t.before == t.after
    allr = run_ablate(AblateParams(str(store), "all", random=0, write=False)).result
    for t in allr.tasks:  # one embedding for every image: one class predicted for all of them
        counts = np.array([c["count"] for c in t.to_dict()["per_class"]])
        after = np.array([c["after"] or 0.0 for c in t.to_dict()["per_class"]])
        assert sorted(after.tolist()).count(1.0) == 1 and after.sum() == 1.0
        assert t.after == pytest.approx(counts[after == 1.0][0] / counts.sum(), abs=1e-12)


def test_per_head_effects_and_last_layers_experiment(store):
    run = run_ablate(AblateParams(str(store), "all-but-last:4", random=0, per_head=True))
    eff = run.head_effects
    with open_store(store) as r:
        n = len(r.layers) * int(r.info["n_heads"])
        stored = r.query("SELECT * FROM head_effects")
    assert len(eff) == n * 6 and len(stored) == len(eff)
    assert np.allclose(eff["drop"], eff["before"] - eff["after"])


def test_bad_specs_are_one_line_errors(store, capsys):
    for spec in ("L99H0", "label:", "layers:9-3", "bogus"):
        assert main(["ablate", "--store", str(store), "--ablate", spec, "--no-write"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(e.startswith("error: ") and "valid forms" in e for e in err)
    assert main(["ablate", "--store", str(store), "--ablate", "none", "--tasks", "folders"]) == 2


def test_labelled_heads_carry_their_factor_among_the_late_heads(store):
    # within the last four layers' direct effects (everything else mean-ablated), ablating the
    # heads labelled `colour` costs colour accuracy far more than as many random heads do
    with open_store(store) as r:
        labels = {h: lab for h, lab in r.head_labels().items() if h[0] >= 4}
    colour = [f"L{l}H{h}" for (l, h), lab in sorted(labels.items()) if lab == "colour"]
    assert colour, labels
    base = run_ablate(AblateParams(str(store), "all-but-last:4", random=0, write=False))
    start = base.result.task("colour").after
    res = run_ablate(
        AblateParams(str(store), "all-but-last:4+" + ",".join(colour), random=10, write=False)
    ).result.task("colour")
    assert start - res.after > 0.1
    assert start - res.after > 2 * (start - res.random_mean)
