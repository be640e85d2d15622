"""Unit pages' precomputation: principal direction, extreme images, histograms, maps, tables."""

import json
from pathlib import Path

import numpy as np
import pytest

from engine.core import units


def _brute_top(proj: np.ndarray, k: int) -> np.ndarray:
    """Highest first, ties by lower index: a full stable sort."""
    return np.lexsort((np.arange(len(proj)), -proj))[:k]


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(4))
def test_summary_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, d = 300, 6
    # anisotropic, off-centre; seed 3 quantised so that projections tie
    c = (rng.standard_normal((n, d)) * np.array([3, 1, 0.5, 0.3, 0.2, 0.1]) + 0.4).astype(
        np.float32
    )
    if seed == 3:
        c = np.round(c)
    s = units.summarise_head(c, k=16, n_bins=10)
    # direction: the top right singular vector of the centred coordinates, up to sign
    cc = c.astype(np.float64) - c.astype(np.float64).mean(0)
    _, sv, vh = np.linalg.svd(cc, full_matrices=False)
    assert abs(abs(float(s.direction @ vh[0])) - 1) < 1e-5
    assert s.explained == pytest.approx(sv[0] ** 2 / (sv**2).sum(), rel=1e-5)
    assert s.total_var == pytest.approx((cc**2).sum() / n, rel=1e-5)
    assert s.mean_proj >= 0  # sign convention: the head's mean projects non-negatively
    proj = c @ s.direction
    np.testing.assert_array_equal(s.top, _brute_top(proj, 16))
    np.testing.assert_array_equal(s.bottom, _brute_top(-proj, 16))
    np.testing.assert_allclose(s.top_proj, proj[s.top], rtol=1e-6)
    assert (np.diff(s.top_proj) <= 0).all() and (np.diff(s.bottom_proj) >= 0).all()
    # histograms: every image once, over the quantity's own range
    norm = np.sqrt(np.einsum("ik,ik->i", c, c))  # the code's float32 rounding
    np.testing.assert_allclose(norm, np.linalg.norm(c, axis=1), rtol=1e-5)
    for hg, x in ((s.norm_hist, norm), (s.proj_hist, proj)):
        assert hg.counts.sum() == n and len(hg.edges) == 11
        assert hg.edges[0] == pytest.approx(x.min()) and hg.edges[-1] == pytest.approx(x.max())
        np.testing.assert_array_equal(hg.counts, np.histogram(x, bins=hg.edges)[0])


@pytest.mark.unit
def test_degenerate_heads_and_helpers():
    # a head writing nothing: a direction, no variance, still k images and full histograms
    s = units.summarise_head(np.zeros((20, 4), np.float32), k=16)
    assert s.explained == 0 and s.total_var == 0 and len(s.top) == 16
    assert s.norm_hist.counts.sum() == 20
    assert units.summarise_head(np.ones((5, 3), np.float32), k=16).top.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        units.summarise_head(np.zeros((0, 4), np.float32))
    # streamed total variance equals the full one
    x = np.random.default_rng(0).standard_normal((1000, 7)) * 5 + 100
    got = units.total_variance(x[a : a + 128] for a in range(0, 1000, 128))
    assert got == pytest.approx(x.var(axis=0).sum(), rel=1e-9)
    # related units: by |cosine|, never the unit itself
    dirs = np.array([[1, 0, 0], [-0.9, 0.1, 0], [0, 1, 0], [1, 0, 0.01]], np.float32)
    idx, cos = units.related(dirs, 0, n=2)
    assert idx.tolist() == [3, 1] and cos[1] < 0


# ---- through interpret, on a real tiny store


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    from engine.pipeline.build import BuildParams, build_store
    from engine.pipeline.interpret import run_interpretation

    link = tmp_path_factory.mktemp("units") / "artifacts" / "t"
    link.parent.mkdir()
    build_store(BuildParams(model="tiny-test", images="synthetic:96", store=str(link),
                            random_weights=True, progress=False, layers="all"))  # fmt: skip
    run_interpretation(link, progress=False, unit_k=8)
    return link


@pytest.mark.slow
def test_interpret_writes_unit_tables(interpreted):
    from engine.store import open_store
    from engine.store import unit_tables as ut

    with open_store(interpreted) as r:
        summary = ut.unit_summary(r)
        heads = [(l, h) for l in r.layers for h in range(r.n_heads)]
        assert [tuple(x) for x in summary[["layer", "head"]].to_numpy()] == heads
        assert set(summary.maps) == {"computed"} and (summary.k == 8).all()
        out = r.output().astype(np.float64)
        embed_var = out.var(axis=0).sum()
        for row in summary.itertuples():
            c = r.coords(row.layer, row.head)  # [image, d_head]
            basis = r.basis(row.layer, row.head)  # [d_head, d_embed]
            direction = np.asarray(row.direction, np.float32)  # [d_embed]
            assert np.linalg.norm(direction) == pytest.approx(1, abs=1e-5)
            proj = (c @ basis) @ direction  # brute force in embedding space
            ex = ut.unit_examples(r, row.layer, row.head)
            top, bottom = ex[ex.side == "top"], ex[ex.side == "bottom"]
            assert top["rank"].tolist() == list(range(8))
            # the stored top-k is a brute-force sort (up to float ties of the two paths)
            np.testing.assert_allclose(top.projection, np.sort(proj)[::-1][:8], atol=1e-5)
            np.testing.assert_allclose(bottom.projection, np.sort(proj)[:8], atol=1e-5)
            np.testing.assert_allclose(proj[top.image_id], top.projection, atol=1e-5)
            # each map plus the class token's term is the image's projection (fp16 storage)
            scale = float(np.abs(proj).max())
            for e in ex.itertuples():
                assert len(e.map) == r.info["grid"] ** 2
                assert sum(e.map) + e.map_cls == pytest.approx(e.projection, abs=2e-3 * scale)
            hist = ut.unit_histograms(r, row.layer, row.head)
            for q in ("norm", "projection"):
                assert hist[hist.quantity == q]["count"].sum() == r.info["n_images"]
            share = c.astype(np.float64).var(axis=0).sum() / embed_var
            assert row.variance_share == pytest.approx(share, rel=1e-4)


@pytest.mark.slow
def test_random_data_store_has_no_maps_and_old_stores_read_empty(tmp_path, monkeypatch):
    from engine.pipeline.interpret import run_interpretation
    from engine.store import open_store
    from engine.store import unit_tables as ut
    from engine.store.random_store import write_random_store

    link = tmp_path / "artifacts" / "r"
    link.parent.mkdir()
    dims = {"n_layers": 4, "n_heads": 2, "d_model": 16, "d_head": 8, "d_embed": 12,
            "image_size": 32, "patch_size": 16, "grid": 2}  # fmt: skip
    write_random_store(Path(link), 40, dims=dims, image_chunk=8)
    with open_store(link) as r:  # before interpret: the tables read empty
        assert ut.unit_summary(r).empty and ut.unit_examples(r, 0, 0).empty

    def fake_texts(s, texts):  # a session (interpret) or a reader: both have .info
        rng = np.random.default_rng(0)
        t = rng.standard_normal((len(texts), int(s.info["d_embed"])))
        return (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)

    from engine.pipeline import units as unit_pages

    monkeypatch.setattr(unit_pages, "EMBED_VAR_SAMPLE", 16)  # 2 of the 5 image chunks
    run_interpretation(link, progress=False, text_embeddings_fn=fake_texts, unit_k=4)
    with open_store(link) as r:
        s = ut.unit_summary(r)
        assert len(s) == 8 and s.maps.str.startswith("random data").all()
        # the embedding variance from evenly spaced whole chunks: the first and the last
        assert (s.embed_var_images == 16).all()
        out = r.output().astype(np.float64)[np.r_[0:8, 32:40]]
        share = r.coords(3, 1).astype(np.float64).var(axis=0).sum() / out.var(axis=0).sum()
        assert s.set_index(["layer", "head"]).loc[(3, 1), "variance_share"] == pytest.approx(
            share, rel=1e-4
        )
        ex = ut.unit_examples(r, 3, 1)
        assert len(ex) == 8 and ex["map"].isna().all()
        # the bank's texts nearest each sign of the direction
        from engine.sources.banks import load_bank

        bank = load_bank("general")
        row = s.set_index(["layer", "head"]).loc[(3, 1)]
        scores = fake_texts(r, bank.texts) @ np.asarray(row.direction, np.float32)
        order = np.argsort(-scores, kind="stable")
        assert json.loads(row.texts_along) == [bank.texts[i] for i in order[:5]]
        assert json.loads(row.texts_against) == [bank.texts[i] for i in order[::-1][:5]]
