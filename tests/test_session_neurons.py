"""The store session's neurons (engine.session.neurons): the table, text search, one neuron's
facts and its live map on a query image, checked against the stored effects."""

from __future__ import annotations

import numpy as np
import pytest

from engine.core import second_order as so
from engine.errors import UserError
from engine.pipeline.build import BuildParams, build_store
from engine.pipeline.neuron_interpret import run_neuron_interpretation
from engine.pipeline.neurons import StoredNeurons
from engine.session import StoreSession
from engine.session.neurons import neuron_name, parse_neuron

pytestmark = pytest.mark.unit

N = 40


def _build(link, neurons):
    build_store(BuildParams(model="tiny-test", images=f"synthetic:{N}:2", store=str(link),
                            batch_size=20, progress=False, neurons=neurons))  # fmt: skip


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    link = tmp_path_factory.mktemp("sn") / "s"
    _build(link, "1-1")
    run_neuron_interpretation(link, None, "world", top=8, n_words=4, progress=False)
    with StoreSession.open(link) as s:
        yield s


def test_names_round_trip():
    assert parse_neuron(neuron_name(4, 123)) == (4, 123) and parse_neuron("l4n7") == (4, 7)
    assert parse_neuron("L4H7") is None


def test_table_is_every_neuron_by_significance(session):
    t = session.neuron_table()
    assert len(t) == StoredNeurons(session.reader).n_neurons and set(t.layer) == {1}
    assert (np.diff(t.significance.to_numpy()) <= 0).all()
    assert t.unit.iloc[0] == neuron_name(t.layer.iloc[0], t.neuron.iloc[0])
    assert (t.words != "").any()


def test_search_ranks_by_cosine_with_the_text(session):
    hits = session.search_neurons("a red shape", k=7)
    assert len(hits) == 7 and (np.diff(hits.cosine.to_numpy()) <= 1e-7).all()
    t = session.text_embeddings(["a red shape"])[0]
    cos = [
        float(session.neuron_facts(l, n).direction @ t)
        for l, n in zip(hits.layer, hits.neuron, strict=True)
    ]
    np.testing.assert_allclose(hits.cosine, cos, rtol=1e-4, atol=1e-5)
    best = max(float(np.asarray(d) @ t) / np.linalg.norm(d)
               for d in session.reader.table("neuron_stats").direction)  # fmt: skip
    assert np.isclose(hits.cosine.iloc[0], best, atol=1e-5)
    with pytest.raises(UserError):
        session.search_neurons("  ")


def test_map_sums_to_the_stored_effect_along_its_direction(session):
    sn = StoredNeurons(session.reader)
    for image, neuron in [(3, 0), (17, 100), (31, 255)]:
        q = session.query_from_store(image)
        facts = session.neuron_facts(1, neuron)
        m = session.neuron_map(q, 1, neuron)
        k = sn.k(1, image, image + 1)[0, neuron]  # [K] stored (int8) frame coordinates
        stored = k @ sn.frame(1, [neuron])[0]  # [d_embed]
        bound = so.quantisation_bound(session.reader.lazy("neuron_scale")[image, 0, neuron], len(k))
        # the live map is the stored effect within the int8 bound (the source is a thumbnail or
        # the synthetic image itself: the store's own pixels)
        assert abs(m.norm - np.linalg.norm(stored)) <= bound + 1e-5 * m.norm
        assert abs(m.total - float(stored @ facts.direction)) <= bound + 1e-5 * m.norm
        assert np.isclose(m.patches.sum() + m.cls, m.total, rtol=1e-5, atol=1e-7)
    assert m.patches.ndim == 2 and m.patches.shape[0] == m.patches.shape[1]


def test_segmentation_averages_the_text_nearest_neurons_maps_along_the_text(session):
    q = session.query_from_store(5)
    seg, used = session.neuron_segmentation(q, "a red shape", k=4)
    t = session.text_embeddings(["a red shape"])[0]
    maps = [session.neuron_map(q, l, n, t) for l, n in zip(used.layer, used.neuron, strict=True)]
    np.testing.assert_allclose(seg, np.mean([m.patches for m in maps], axis=0), rtol=1e-6)
    assert len(used) == 4 and seg.shape == maps[0].patches.shape
    # each map along the text sums (with the class token) to that neuron's effect · text
    sn = StoredNeurons(session.reader)
    l, n = int(used.layer.iloc[0]), int(used.neuron.iloc[0])
    eff = sn.k(l, 5, 6)[0, n] @ sn.frame(l, [n])[0]
    bound = so.quantisation_bound(session.reader.lazy("neuron_scale")[5, 0, n], sn.n_paths(l))
    assert abs(maps[0].patches.sum() + maps[0].cls - float(eff @ t)) <= bound + 1e-6


def test_bad_neurons_are_one_line(session, tmp_path):
    with pytest.raises(UserError, match="not a described neuron"):
        session.neuron_facts(1, 9999)
    with pytest.raises(UserError, match="were not built"):
        session.neuron_map(session.query_from_store(0), 0, 1)
    plain = tmp_path / "plain"
    _build(plain, None)
    with StoreSession.open(plain) as s, pytest.raises(UserError, match="built without neurons"):
        s.neuron_table()


# ---- ablate neurons (engine.core.neuron_spec, engine.session.neuron_ablation) ----


def test_neuron_specs_name_the_right_neurons():
    from engine.core.neuron_spec import SIGNIFICANT_SHARE, is_neuron_spec, parse_neuron_spec

    sig = {6: np.array([0.1, 0.9, 0.5, 0.3, 0.0, 0.7, 0.2, 0.8, 0.6, 0.4])}
    assert is_neuron_spec("L6N1,L6N2") and is_neuron_spec("neurons:L6:all")
    assert not is_neuron_spec("L6H1") and not is_neuron_spec("label:colour")
    assert parse_neuron_spec("L6N3+L6N1", sig)[6].tolist() == [1, 3]
    n_sig = round(SIGNIFICANT_SHARE * 10)
    top = np.argsort(-sig[6])[:n_sig]
    assert parse_neuron_spec("neurons:L6:significant", sig)[6].tolist() == sorted(top)
    rest = parse_neuron_spec("neurons:L6:insignificant", sig)[6]
    assert len(rest) == 10 - n_sig and not set(rest) & set(top)
    assert parse_neuron_spec("neurons:L6:top:3", sig)[6].tolist() == [1, 5, 7]
    assert parse_neuron_spec("neurons:L6:bottom:2", sig)[6].tolist() == [0, 4]
    by_text = parse_neuron_spec("neurons:L6:top:2:a dog", sig, lambda l, t: -sig[l])
    assert by_text[6].tolist() == [0, 4]
    for bad in ("L7N1", "L6N10", "neurons:L6:top:0", "neurons:L6:sideways", "neurons:L6:top:2:x"):
        with pytest.raises(UserError, match="bad neuron spec"):
            parse_neuron_spec(bad, sig)


def test_ablating_every_neuron_removes_the_layers_propagated_write(session):
    from engine.core import ablation
    from engine.session.neuron_ablation import neuron_delta

    fit, ev = ablation.split(N, 0.5, 0)
    n = StoredNeurons(session.reader).n_neurons
    delta = neuron_delta(session, {1: np.arange(n)}, fit, ev)  # [image, d_embed]
    total = session.reader.array("neuron_total")[:, 0]  # the write, unfactorised
    want = total[ev] - total[fit].mean(axis=0)
    scale = session.reader.array("neuron_scale")[:, 0]  # [image, neuron]
    k = StoredNeurons(session.reader).n_paths(1)
    bound = so.quantisation_bound(scale, k).sum(axis=1)  # per image
    err = np.linalg.norm(delta - want, axis=1)
    assert (err <= bound[ev] + bound[fit].mean() + 1e-4 * np.linalg.norm(want, axis=1)).all()
    # one neuron alone is its own centred stored effect
    sn = StoredNeurons(session.reader)
    kk = sn.k(1, 0, N)[:, 7]  # [image, K]
    eff = kk @ sn.frame(1, [7])[0]
    one = neuron_delta(session, {1: np.array([7])}, fit, ev)
    np.testing.assert_allclose(one, eff[ev] - eff[fit].mean(0), rtol=1e-4, atol=1e-6)


def test_ablate_neurons_reports_before_after_and_random(session):
    res = session.ablate_neurons("neurons:L1:significant", random=3)
    assert res.n_ablated == round(0.1 * StoredNeurons(session.reader).n_neurons)
    assert res.n_fit + res.n_eval == N and res.tasks
    for t in res.tasks:
        assert 0 <= t.after <= 1 and 0 <= t.before <= 1 and t.random.shape == (3,)
    none = session.ablate_neurons("L1N0", random=0)  # a dead-weight check: one neuron, no draws
    assert none.n_ablated == 1 and none.tasks[0].random.size == 0


def test_ablate_cli_takes_neurons_and_refuses_unbuilt_layers(session, capsys):
    import json

    from engine.cli import main as cli_main

    argv = ["ablate", "--store", str(session.path), "--random", "2", "--json", "--ablate"]
    assert cli_main([*argv, "neurons:L1:top:5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_ablated"] == 5 and out["tasks"] and "random_mean" in out["tasks"][0]
    assert cli_main([*argv, "neurons:L0:all"]) == 2
    err = capsys.readouterr().err
    assert "layer 0 of" in err and "were not built" in err and "--neurons 0-1" in err


def test_demo_store_visualises_the_labelled_heads_of_its_last_layers():
    from engine.cli.demo_store import visualise_spec

    labels = {(6, 0): "colour", (7, 1): "shape", (7, 2): "mixed", (7, 0): "texture", (5, 3): ""}
    assert visualise_spec(labels, 8, last=1) == "L7H0,L7H1"
    assert visualise_spec(labels, 8, last=2) == "L6H0,L7H0,L7H1"
    assert visualise_spec({(7, 2): "mixed"}, 8) is None


def test_drop_caches_forgets_the_neuron_query_captures(session):
    session.drop_caches()  # what earlier tests of this module's session left
    q = session.query_from_store(2)
    m = session.neuron_map(q, 1, 5)
    assert len(session._neuron_queries) == 1  # the capture, kept per (image, layer)
    session.neuron_map(q, 1, 6)
    assert len(session._neuron_queries) == 1  # reused by another neuron of the layer
    session.drop_caches()
    assert len(session._neuron_queries) == 0
    again = session.neuron_map(q, 1, 5)  # recomputed after the drop, the same map
    np.testing.assert_allclose(again.patches, m.patches, rtol=1e-6)
    assert len(session._neuron_queries) == 1
