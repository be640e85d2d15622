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


def test_bad_neurons_are_one_line(session, tmp_path):
    with pytest.raises(UserError, match="not a described neuron"):
        session.neuron_facts(1, 9999)
    with pytest.raises(UserError, match="were not built"):
        session.neuron_map(session.query_from_store(0), 0, 1)
    plain = tmp_path / "plain"
    _build(plain, None)
    with StoreSession.open(plain) as s, pytest.raises(UserError, match="built without neurons"):
        s.neuron_table()
