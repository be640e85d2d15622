"""Neurons as units (engine.core.neuron_units, engine.pipeline.neuron_units): the top/bottom images
along each neuron's direction against a brute-force sort of every stored image, the exactness
certificate, the streamed norm histogram, and the unit tables written by `interpret --neurons`
beside the heads' rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.core import neuron_analysis as na
from engine.core import neuron_units as nu
from engine.pipeline.build import BuildParams, build_store
from engine.pipeline.neuron_interpret import run_neuron_interpretation
from engine.pipeline.neurons import StoredNeurons
from engine.session import StoreSession
from engine.store import open_store
from engine.store import unit_tables as ut

pytestmark = pytest.mark.unit

N = 60


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    link = tmp_path_factory.mktemp("nu") / "s"
    build_store(BuildParams(model="tiny-test", images=f"synthetic:{N}:2", store=str(link),
                            batch_size=20, progress=False, neurons="1-1"))  # fmt: skip
    # top=12 of 60 images: the certificate decides; k=4 per side
    run_neuron_interpretation(link, None, "world", top=12, n_words=4, progress=False, unit_k=4,
                              unit_map_neurons=3)  # fmt: skip
    return link


def _brute(link):
    """Every stored image's projection on every neuron's stored direction: [image, neuron]."""
    with StoreSession.open(link) as s:
        sn = StoredNeurons(s.reader)
        layer = sn.layers[0]
        k = sn.k(layer, 0, N)  # [image, neuron, K]
        q = sn.frame(layer)  # [neuron, K, d_embed]
        d = ut.unit_summary(s.reader, "neuron")
        dirs = np.stack([np.asarray(x, np.float32) for x in d.direction])  # [neuron, d_embed]
        v = np.einsum("nke,ne->nk", q, dirs)  # the direction in each frame
        proj = np.einsum("ink,nk->in", k, v)
        norms = np.linalg.norm(k - k.mean(axis=0, keepdims=True), axis=2)  # centred [image, n]
    return layer, d, proj, norms


def test_top_k_equals_a_brute_force_sort_where_certified(store):
    layer, summ, proj, _ = _brute(store)
    with open_store(store) as r:
        certified_top = certified_bottom = 0
        for _, row in summ.iterrows():
            n = int(row.neuron)
            ex = ut.unit_examples_of(r, row.unit)
            top = ex[ex.side == "top"]
            bottom = ex[ex.side == "bottom"]
            assert len(top) == len(bottom) == 4 and row.k == 4
            # the stored projections are the brute-force projections of those images
            np.testing.assert_allclose(top.projection, proj[top.image_id, n], rtol=1e-3,
                                       atol=1e-6)  # fmt: skip
            assert (np.diff(top.projection.to_numpy()) <= 1e-9).all()
            assert (np.diff(bottom.projection.to_numpy()) >= -1e-9).all()
            order = np.lexsort((np.arange(N), -proj[:, n]))
            if row.exact_top:
                certified_top += 1
                assert top.image_id.tolist() == order[:4].tolist(), row.unit
            if row.exact_bottom:
                certified_bottom += 1
                low = np.lexsort((np.arange(N), proj[:, n]))
                assert bottom.image_id.tolist() == low[:4].tolist(), row.unit
    # the certificate holds for most neurons' top side (a sparse effect has one main direction)
    assert certified_top > len(summ) // 2, certified_top
    assert certified_bottom >= 0


def test_the_certificate_is_sound_and_all_kept_is_exact():
    """Random effects (no structure): whenever the certificate holds the result is the brute-force
    one; when the kept set is every image every neuron is exact."""
    g = np.random.default_rng(0)
    n_img, n_neu, kk = 80, 30, 5
    k = g.normal(size=(n_img, n_neu, kk)).astype(np.float32) * g.gamma(0.3, size=(n_img, n_neu, 1))
    for top in (10, n_img):
        st = na.NeuronStats(n_neu, kk, top)
        q = torch.from_numpy(k).permute(0, 2, 1).numpy()  # the stored layout [image, K, neuron]
        ones = np.ones((n_img, n_neu), np.float32)
        for a in range(0, n_img, 32):
            st.update_mean(q[a : a + 32], ones[a : a + 32])
        for a in range(0, n_img, 32):
            st.update_top(q[a : a + 32], ones[a : a + 32], a)
        st.finish()
        v = na.principal_directions(st.top_k)
        s = nu.summarise_neurons(st.top_k.numpy(), st.top_image.numpy(), st.threshold, st.mean,
                                 v, 6, n_images=n_img)  # fmt: skip
        proj = np.einsum("ink,nk->in", k.astype(np.float64), v)
        for n in range(n_neu):
            hi = np.lexsort((np.arange(n_img), -proj[:, n]))[:6]
            lo = np.lexsort((np.arange(n_img), proj[:, n]))[:6]
            if s.exact_top[n]:
                assert s.top[n].tolist() == hi.tolist()
                np.testing.assert_allclose(s.top_proj[n], proj[hi, n], rtol=1e-4, atol=1e-5)
            if s.exact_bottom[n]:
                assert s.bottom[n].tolist() == lo.tolist()
        if top == n_img:
            assert s.exact_top.all() and s.exact_bottom.all()
        else:
            assert not s.exact_bottom.all()  # random signs: the certificate does fail somewhere


def test_streaming_histogram_is_numpys_over_its_final_bins():
    g = np.random.default_rng(1)
    x = np.abs(g.standard_cauchy(size=(500, 7)))  # heavy tails: the range grows chunk by chunk
    x[:, 3] = 0.0  # a dead neuron
    h = nu.StreamingHistogram(7, 16)
    for a in range(0, 500, 37):
        h.update(torch.from_numpy(x[a : a + 37]))
    for n in range(7):
        hist = h.histogram(n)
        assert hist.counts.sum() == 500
        assert hist.edges[-1] > x[:, n].max() or n == 3
        ref, _ = np.histogram(x[:, n], bins=hist.edges)
        ref[-1] -= int((x[:, n] == hist.edges[-1]).sum())  # numpy closes the last bin
        np.testing.assert_array_equal(hist.counts, ref)


def test_tables_hold_both_kinds_and_heads_survive_a_neuron_rerun(store):
    with open_store(store) as r:
        heads_before = ut.unit_summary(r)
        neurons = ut.unit_summary(r, "neuron")
        sn_n = StoredNeurons(r).n_neurons
        hist = ut.unit_histograms_of(r, neurons.unit.iloc[0])
        mapped = [u for u, m in zip(neurons.unit, neurons.maps, strict=True)
                  if m.startswith("computed")]  # fmt: skip
        ex = ut.unit_examples_of(r, mapped[0])
    assert len(neurons) == sn_n and set(neurons.kind) == {"neuron"} and neurons["head"].isna().all()
    assert set(heads_before.kind) <= {"head"}  # tiny-test stores were not interpreted: no heads
    # norm: every image; projection: the kept (top) images only
    counts = hist.groupby("quantity")["count"].sum()
    assert counts["norm"] == N and counts["projection"] == neurons.proj_images.iloc[0] == 12
    assert 0 < neurons.variance_share.max() < 1
    # maps for the 3 most significant neurons; each sums (with its class token) to the
    # projection of the live effect (the stored one is int8: close)
    assert len(mapped) == 3
    for _, e in ex.iterrows():
        assert e["map"] is not None
        assert float(np.sum(e["map"]) + e.map_cls) == pytest.approx(e.projection, rel=0.05,
                                                                     abs=1e-6)  # fmt: skip
    # an unknown name or a head name on a neuron-only store reads empty
    with open_store(store) as r:
        assert ut.unit_examples_of(r, "L1N99999").empty and ut.unit_examples_of(r, "nope").empty


def test_each_interpret_replaces_only_its_kind_and_older_tables_are_upgraded(tmp_path):
    """Heads after neurons keep the neurons' rows (and vice versa); a store whose unit tables
    predate `kind`/`unit`/`neuron` reads its rows as heads, and the next neuron run adds the
    columns in place, keeping the heads' rows."""
    from engine.pipeline.interpret import run_interpretation
    from engine.store import mutate_store, schema

    link = tmp_path / "s"
    build_store(BuildParams(model="tiny-test", images="synthetic:24:2", store=str(link),
                            batch_size=12, progress=False, neurons="1-1"))  # fmt: skip
    run_neuron_interpretation(link, None, "world", top=6, n_words=2, progress=False,
                              unit_map_neurons=0)  # fmt: skip
    run_interpretation(link, "offline", "world", progress=False, unit_maps=False)
    with open_store(link) as r:
        heads, neurons = ut.unit_summary(r), ut.unit_summary(r, "neuron")
        n_head_examples = len(ut.unit_examples_of(r, heads.unit.iloc[0]))
        n_neurons = StoredNeurons(r).n_neurons
    assert len(heads) and set(heads.kind) == {"head"} and len(neurons) == n_neurons
    assert n_head_examples > 0 and neurons.maps.iloc[0] == "not requested"
    # an older store: the unit tables without the new columns, only head rows
    with mutate_store(link) as w:
        for t in schema.UNIT_TABLES:
            w._con.execute(f"DELETE FROM {t} WHERE kind = 'neuron'")
            for c in ("kind", "unit", "neuron", "exact_top", "exact_bottom", "proj_images"):
                if c in w.columns(t) and not (t == "unit_summary" and c == "unit"):
                    w._con.execute(f'ALTER TABLE {t} DROP COLUMN "{c}"')
    with open_store(link) as r:
        old = ut.unit_summary(r)
        assert old.unit.tolist() == heads.unit.tolist() and set(old.kind) == {"head"}
        assert ut.unit_summary(r, "neuron").empty
        ex = ut.unit_examples_of(r, heads.unit.iloc[0])
        assert len(ex) == n_head_examples and set(ex.unit) == {heads.unit.iloc[0]}
    run_neuron_interpretation(link, None, "world", top=6, n_words=2, progress=False,
                              unit_map_neurons=0)  # fmt: skip
    with open_store(link) as r:
        assert ut.unit_summary(r).unit.tolist() == heads.unit.tolist()
        assert len(ut.unit_summary(r, "neuron")) == len(neurons)
        assert len(ut.unit_examples_of(r, heads.unit.iloc[0])) == n_head_examples
        assert len(ut.unit_examples_of(r, neurons.unit.iloc[0])) > 0
