"""Interpretation over a real (tiny, demo-world) store: CLI round trips, reruns, LLM failure paths."""

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.core.labels import MIXED
from engine.errors import UserError
from engine.pipeline.build import BuildParams, build_store
from engine.pipeline.interpret import reference_score_table, run_interpretation
from engine.store import open_store

pytestmark = pytest.mark.slow


@pytest.fixture
def store(tmp_path):
    link = tmp_path / "artifacts" / "t"
    link.parent.mkdir()
    build_store(BuildParams(model="tiny-test", images="synthetic:96", store=str(link),
                            random_weights=True, progress=False, layers="all"))  # fmt: skip
    return link


def tables(link):
    with open_store(link) as r:
        return {t: r.query(f"SELECT * FROM {t}") for t in
                ("textspan", "head_labels", "scores", "ground_truth", "llm_cache", "runs")}  # fmt: skip


def test_interpret_and_scores_cli(store, capsys):
    assert main(["interpret", "--store", str(store), "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    t = tables(store)
    with open_store(store) as r:
        n_heads, layers, factors = r.info["n_heads"], r.layers, r.factors()
    heads = n_heads * len(layers)
    assert summary["bank"] == "world" and summary["heads"] == heads  # demo-world default bank
    assert len(t["head_labels"]) == heads and set(t["head_labels"].labeller) == {"offline"}
    assert 0 < len(t["textspan"]) <= heads * 10
    # every label is a world factor or mixed; picks ranked 0.., their shares sum to at most 1
    assert set(t["head_labels"].label) <= set(factors[0]) | {MIXED}
    for _, g in t["textspan"].groupby(["layer", "head"]):
        g = g.sort_values("rank")
        assert g["rank"].tolist() == list(range(len(g)))
        assert (g.variance_removed > 0).all() and (g.score_var > 0).all()
        assert g.variance_removed.sum() <= 1 + 1e-9
    # ground truth: one row per (head, factor), one dominant factor per head
    gt = t["ground_truth"]
    assert len(gt) == heads * len(factors[0])
    assert gt.groupby(["layer", "head"]).is_dominant.sum().eq(1).all()
    assert gt.eta2.between(0, 1).all()
    # scores: the last-4 range plus each layer, both entanglement variants
    sc = t["scores"]
    assert set(sc.metric) == {"association", "entanglement_shared", "entanglement_unique"}
    rng = sc[sc.scope == "range"].set_index("metric")
    assert (rng.total == heads).all()
    assert rng.loc["entanglement_shared", "count"] + rng.loc["entanglement_unique", "count"] == (
        (t["head_labels"].label != MIXED).sum()
    )
    assert len(sc[sc.scope == "layer"]) == 3 * len(layers)
    run_ids = {t["textspan"].run_id.iloc[0]}
    assert "interpret" in set(t["runs"].kind)
    # scores command, text and JSON
    assert main(["scores", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "entanglement_unique" in out and "entanglement_shared" in out
    assert main(["scores", "--store", str(store), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert len(js["scores"]) == len(sc)
    # any other layer range, scored now from the stored labels
    assert main(["scores", "--store", str(store), "--json", "--range", "1-2"]) == 0
    extra = [x for x in json.loads(capsys.readouterr().out)["scores"] if x["layer_from"] == 1
             and x["layer_to"] == 2]  # fmt: skip
    assert len(extra) == 3 and all(x["total"] == 2 * n_heads for x in extra)
    assert main(["scores", "--store", str(store), "--range", "2-1"]) == 2
    # a rerun replaces the previous interpretation
    assert main(["interpret", "--store", str(store), "--no-progress", "--layers", "last1",
                 "--bank", "general", "--texts-per-head", "5"]) == 0  # fmt: skip
    t2 = tables(store)
    assert len(t2["head_labels"]) == n_heads and set(t2["head_labels"].layer) == {layers[-1]}
    assert set(t2["textspan"].bank) == {"general"} and t2["textspan"]["rank"].max() <= 4
    assert t2["textspan"].run_id.nunique() == 1 and t2["textspan"].run_id.iloc[0] not in run_ids
    assert (t2["runs"].kind == "interpret").sum() == 2
    # general-bank labels cannot name world factors: eta2 is kept, match is NULL
    assert len(t2["ground_truth"]) == n_heads * len(factors[0])
    assert t2["ground_truth"]["match"].isna().all()


def test_bad_inputs_are_one_line_errors(store, tmp_path, capsys):
    assert main(["interpret", "--store", str(tmp_path / "nope")]) == 2
    assert main(["interpret", "--store", str(store), "--layers", "7"]) == 2
    assert main(["interpret", "--store", str(store), "--bank", str(tmp_path / "x.txt")]) == 2
    assert main(["scores", "--store", str(store)]) == 2  # not interpreted yet
    err = capsys.readouterr().err
    assert err.count("error: ") == 4 and "Traceback" not in err


def test_llm_run_failure_keeps_store_and_key_secret(store, monkeypatch):
    from test_llm import KEY, FakeOpenAI

    server = FakeOpenAI()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    try:
        server.answer = "Colour"
        run_interpretation(store, progress=False)
        before = tables(store)
        # three good answers, then the server breaks: no labels change, paid answers are cached
        server.script = ["good"] * 3 + ["500"] * 100
        with pytest.raises(UserError, match="HTTP 500"):
            run_interpretation(store, labeller="llm", llm_model="test-model", llm_retries=1,
                               progress=False)  # fmt: skip
        after = tables(store)
        assert after["head_labels"].equals(before["head_labels"])
        assert after["scores"].equals(before["scores"])
        assert len(after["llm_cache"]) == 3
        # the rerun asks only for the heads not cached, then a third run costs nothing
        server.script, n = [], len(server.requests)
        run_interpretation(store, labeller="llm", llm_model="test-model", progress=False)
        t = tables(store)
        heads = len(t["head_labels"])
        labelled = (t["head_labels"].votes.map(json.loads).map(lambda v: v["response"])).notna()
        assert len(server.requests) - n == labelled.sum() - 3
        assert set(t["head_labels"].labeller) == {"llm:test-model"} and heads > 3
        assert set(t["head_labels"].label[labelled]) == {"colour"}  # a world factor name
        n = len(server.requests)
        run_interpretation(store, labeller="llm", llm_model="test-model", progress=False)
        assert len(server.requests) == n
        # the key is nowhere in the store's files
        root = Path(store).parent
        for p in root.rglob("*"):
            if p.is_file():
                assert KEY.encode() not in p.read_bytes(), p
    finally:
        server.close()


@pytest.mark.unit
def test_reference_score_table_matches_readme_counts():
    t = reference_score_table().set_index("model")
    assert len(t) == 6 and (t.shared + t.unique == t.heads).all()
    got = {(m, p): u for m, p, u in zip(t.index, t.pretrained, t.unique, strict=True)}
    assert got[("ViT-B-32", "openai")] == 21 and got[("ViT-L-14", "laion2b_s32b_b82k")] == 23


def test_a_rebuild_during_interpret_is_refused_not_mislabelled(store):
    """interpret reads version V; a rebuild publishes V+1 (other images) before the write: the
    labels of V must not land on V+1's images."""
    with open_store(store) as r:
        before = r.version_path

    def rebuild_then_embed(session, texts):
        build_store(BuildParams(model="tiny-test", images="synthetic:64:9", store=str(store),
                                random_weights=True, progress=False, layers="all"))  # fmt: skip
        return session.text_embeddings(texts)

    with pytest.raises(UserError, match="republished while this ran"):
        run_interpretation(store, progress=False, text_embeddings_fn=rebuild_then_embed)
    with open_store(store) as r:
        assert r.version_path != before and r.info["n_images"] == 64
        assert not r.interpreted  # nothing written on the rebuilt store
