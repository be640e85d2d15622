"""engine.core.analysis: identities and known answers on synthetic arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.core import analysis as an

pytestmark = pytest.mark.unit


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_unit_rows_norms_and_zero_rows(rng):
    x = rng.normal(size=(5, 7)).astype(np.float32)
    x[2] = 0
    u = an.unit_rows(x)
    norms = np.linalg.norm(u, axis=1)
    np.testing.assert_allclose(np.delete(norms, 2), 1.0, rtol=1e-6)
    assert norms[2] == 0
    # direction preserved
    np.testing.assert_allclose(u[0] * np.linalg.norm(x[0]), x[0], rtol=1e-5)


def test_top_k_matches_full_sort(rng):
    s = rng.normal(size=1000)
    r = an.top_k(s, 10)
    expected = np.argsort(-s)[:10]
    np.testing.assert_array_equal(r.index, expected)
    np.testing.assert_allclose(r.score, s[expected], rtol=1e-6)
    assert np.all(np.diff(r.score) <= 0)


def test_top_k_ties_break_by_lower_index_and_exclude():
    s = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    assert an.top_k(s, 2).index.tolist() == [1, 2]
    assert an.top_k(s, 2, exclude=[1]).index.tolist() == [2, 4]
    # k larger than the valid count returns only valid images
    assert an.top_k(s, 10, exclude=[0, 1]).index.tolist() == [2, 4, 3]
    assert an.top_k(s, 0).index.size == 0
    with pytest.raises(ValueError):
        an.top_k(np.zeros((2, 2)), 1)


def test_head_image_neighbours_finds_the_same_image_first(rng):
    stored = [rng.normal(size=(200, 16)) for _ in range(3)]  # 3 heads
    stored_unit = [an.HeadContributions.from_head_out(m) for m in stored]
    # query = image 17's contributions, scaled (cosine is scale-free)
    query = np.stack([m[17] * 5.0 for m in stored])
    res = an.head_image_neighbours(query, stored_unit, k=8)
    assert len(res) == 3
    for r in res:
        assert r.index[0] == 17
        assert r.score[0] == pytest.approx(1.0, abs=2e-3)  # float16 unit rows
        assert len(r.index) == 8
    # excluding the query image itself
    res = an.head_image_neighbours(query, stored_unit, k=8, exclude=[17])
    assert all(17 not in r.index for r in res)
    with pytest.raises(ValueError):
        an.head_image_neighbours(query[:2], stored_unit)


def test_property_concat_is_cosine_of_concatenated_normalised_vectors(rng):
    heads, n, d = 4, 50, 8
    stored = [rng.normal(size=(n, d)) for _ in range(heads)]
    query = rng.normal(size=(heads, d)) * rng.uniform(0.1, 10, size=(heads, 1))
    got = an.property_scores(
        query, [an.HeadContributions.from_head_out(m) for m in stored], "concat"
    )
    # explicit: concatenate unit-normalised per-head vectors, then cosine
    qcat = np.concatenate([an.unit_rows(q[None])[0] for q in query])
    scat = np.concatenate([an.unit_rows(m) for m in stored], axis=1)  # [image, head*d]
    expected = an.unit_rows(scat) @ an.unit_rows(qcat[None])[0]
    np.testing.assert_allclose(got, expected, atol=2e-3)  # float16 unit rows


def test_property_sum_is_cosine_of_summed_normalised_vectors(rng):
    heads, n, d = 3, 40, 8
    stored = [rng.normal(size=(n, d)) for _ in range(heads)]
    query = rng.normal(size=(heads, d))
    banks = [an.HeadContributions.from_head_out(m) for m in stored]
    got = an.property_scores(query, banks, "sum")
    qsum = sum(an.unit_rows(q[None])[0] for q in query)
    ssum = sum(an.unit_rows(m) for m in stored)
    expected = an.unit_rows(ssum) @ an.unit_rows(qsum[None])[0]
    np.testing.assert_allclose(got, expected, atol=2e-3)  # float16 unit rows
    with pytest.raises(ValueError):
        an.property_scores(query, banks, "max")


def test_text_scores_is_dot_product_and_ranks_aligned_image_first(rng):
    stored = rng.normal(size=(100, 8)).astype(np.float32)
    text = an.unit_rows(rng.normal(size=(1, 8)))[0]
    stored[42] = 10 * text  # an image whose head output points along the text
    s = an.text_scores(stored, text)
    np.testing.assert_allclose(s, stored @ text, rtol=1e-6)
    assert an.top_k(s, 1).index[0] == 42


def _synthetic_maps(rng, layers=2, heads=3, grid=4, d=8):
    """Per-patch contributions [layer, head, grid, grid, d_embed] and a map function."""
    contrib = rng.normal(size=(layers, heads, grid, grid, d)).astype(np.float32)
    return contrib, lambda direction: contrib @ direction  # [layer, head, grid, grid]


def test_aggregate_sums_every_chosen_head(rng):
    contrib, maps_for = _synthetic_maps(rng)
    direction = rng.normal(size=8).astype(np.float32)
    maps = maps_for(direction)
    mask = np.array([[True, False, True], [False, True, True]])
    agg = an.aggregate_maps(maps, mask)
    assert agg.shape == (4, 4)
    # the aggregate's total equals the chosen heads' total contribution · direction
    chosen = contrib[mask].sum(axis=(0, 1, 2))  # [d_embed]
    assert agg.sum() == pytest.approx(float(chosen @ direction), rel=1e-4)
    # and is NOT a single head's map (the paper demo's bug)
    for l, h in zip(*np.nonzero(mask), strict=True):
        assert not np.allclose(agg, maps[l, h])
    np.testing.assert_allclose(an.aggregate_maps(maps), maps.sum(axis=(0, 1)), rtol=1e-5)
    with pytest.raises(ValueError):
        an.aggregate_maps(maps, np.zeros((2, 3), bool))
    with pytest.raises(ValueError):
        an.aggregate_maps(maps, np.ones((3, 3), bool))


def test_contrast_map_is_difference_of_topic_maps(rng):
    _, maps_for = _synthetic_maps(rng)
    t1, t2 = rng.normal(size=(2, 8)).astype(np.float32)
    direction = an.contrast_direction(t1, t2)
    np.testing.assert_allclose(
        an.aggregate_maps(maps_for(direction)),
        an.aggregate_maps(maps_for(t1)) - an.aggregate_maps(maps_for(t2)),
        rtol=1e-4,
        atol=1e-4,
    )
    # swapping the texts flips the sign
    np.testing.assert_allclose(an.contrast_direction(t2, t1), -direction)


def test_upsample_identity_constant_and_orientation():
    g = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(an.upsample(g, 4), g)
    np.testing.assert_allclose(an.upsample(np.full((3, 3), 2.5), 30), 2.5)
    up = an.upsample(g, 64)
    assert up.shape == (64, 64)
    # row 0 of the grid is the top of the image, column 0 the left
    assert up[0, 0] == pytest.approx(0) and up[-1, -1] == pytest.approx(15)
    assert up[0, -1] == pytest.approx(3) and up[-1, 0] == pytest.approx(12)


def test_head_contributions_dot_and_cosine_match_raw(rng):
    raw = rng.normal(size=(30, 8)).astype(np.float16)
    raw[3] = 0
    bank = an.HeadContributions.from_head_out(raw)
    assert len(bank) == 30 and bank.unit.dtype == torch.float16
    t = rng.normal(size=8).astype(np.float32)
    exact = raw.astype(np.float32) @ t
    np.testing.assert_allclose(bank.dot(t), exact, atol=2e-3 * np.abs(exact).max())
    q = raw[7].astype(np.float32)
    assert an.top_k(bank.cosine(q), 1).index[0] == 7
    assert bank.dot(t)[3] == 0
    np.testing.assert_allclose(bank.row(7), raw[7].astype(np.float32), rtol=2e-3, atol=2e-3)
    # large and tiny directions are rescaled, not overflowed or flushed in float16
    for scale in (1e6, 1e-6):
        np.testing.assert_allclose(
            bank.dot(t * scale), exact * scale, rtol=0, atol=2e-3 * np.abs(exact).max() * scale
        )


# ---- in head coordinates: the same numbers and rankings as the d_embed computation


def _heads_in_coordinates(rng, heads=4, n=3000, d_head=6, d_embed=24, rank=None):
    """Stored heads as coordinates in random orthonormal bases (heads' spans overlap: the bases
    of different heads are NOT orthogonal to each other), and the same heads in d_embed."""
    out = []
    for h in range(heads):
        q, _ = np.linalg.qr(rng.normal(size=(d_embed, d_head)))
        basis = q.T.astype(np.float32)  # [d_head, d_embed]
        if rank is not None:
            basis[rank:] = 0  # rank-deficient head: zero rows
        coord = (rng.normal(size=(n, d_head)) * rng.uniform(0.2, 3, size=d_head)).astype(np.float32)
        coord[5 * h] = 0  # a zero contribution
        if rank is not None:
            coord[:, rank:] = 0  # as stored: U S has zero columns past the rank
        out.append((coord, basis, coord @ basis))
    return out


def _reference_property(query, stored, combine):
    """The d_embed definition, fp64: cosine of concatenated / summed unit contributions."""
    q = an.unit_rows(query).astype(np.float64)
    s = [an.unit_rows(m).astype(np.float64) for m in stored]
    if combine == "concat":
        return sum(si @ qi for si, qi in zip(s, q, strict=True)) / len(s)
    total = sum(s)
    norm = np.maximum(np.linalg.norm(total, axis=1), an.EPS)
    return (total @ q.sum(axis=0)) / norm / max(np.linalg.norm(q.sum(axis=0)), an.EPS)


def _same_ranking(got, want, k=10, tol=3e-3):
    """Same top-k as the reference, up to swaps of scores closer than the fp16 tolerance."""
    a, b = an.top_k(got, k), an.top_k(want, k)
    np.testing.assert_allclose(a.score, b.score, atol=tol)
    for i in range(k):
        if a.index[i] != b.index[i]:
            assert abs(float(want[a.index[i]]) - float(want[b.index[i]])) < 2 * tol


@pytest.mark.parametrize("combine", ["concat", "sum"])
@pytest.mark.parametrize("rank", [None, 4])
def test_property_scores_in_coordinates_equal_d_embed(rng, combine, rank):
    """`sum` uses the heads' cross-Gram matrices basis_h basis_gᵀ: derived, and equal here to the
    d_embed computation (up to float16 storage of the unit rows)."""
    heads = _heads_in_coordinates(rng, rank=rank)
    banks = [an.HeadContributions.from_coords(c, b) for c, b, _ in heads]
    dense = [h for _, _, h in heads]
    query = np.stack([h[11] for h in dense]) * 3.0  # image 11's heads, scaled
    query[1] += rng.normal(size=query.shape[1]) * 0.1  # partly outside that head's span
    got = an.property_scores(query, banks, combine)
    want = _reference_property(query, dense, combine)
    np.testing.assert_allclose(got, want, atol=2e-3)
    _same_ranking(got, want)


def test_head_neighbours_and_text_scores_in_coordinates_equal_d_embed(rng):
    heads = _heads_in_coordinates(rng, heads=3)
    banks = [an.HeadContributions.from_coords(c, b) for c, b, _ in heads]
    dense = [h for _, _, h in heads]
    query = np.stack([h[123] for h in dense])
    ours = an.head_image_neighbours(query, banks, k=10)
    for r, bank, q, d in zip(ours, banks, query, dense, strict=True):
        want = an.unit_rows(d) @ an.unit_rows(q[None])[0]  # cosines in d_embed
        assert r.index[0] == 123
        _same_ranking(bank.cosine(q), want)
        np.testing.assert_allclose(r.score, want[r.index], atol=3e-3)
    text = an.unit_rows(rng.normal(size=(1, heads[0][2].shape[1])))[0]  # any direction
    for bank, d in zip(banks, dense, strict=True):
        want = d @ text
        got = bank.dot(text)
        np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())
        _same_ranking(got, want, tol=2e-3 * float(np.abs(want).max()))
        np.testing.assert_allclose(bank.row(7), d[7], atol=2e-3 * np.abs(d).max())


def test_from_head_out_finds_the_basis_of_a_low_rank_head(rng):
    coord, basis, dense = _heads_in_coordinates(rng, heads=1, n=200)[0]
    bank = an.HeadContributions.from_head_out(dense)
    assert bank.basis.shape == (6, 24) and bank.unit.shape == (200, 6)
    np.testing.assert_allclose(bank.norm, np.linalg.norm(dense, axis=1), rtol=1e-5, atol=1e-6)
    assert bank.nbytes == 200 * 6 * 2 + 200 * 4 + 6 * 24 * 4


def test_ground_truth_eta2_is_the_same_in_coordinates(rng):
    from engine.core.groundtruth import head_eta2

    coord, basis, dense = _heads_in_coordinates(rng, heads=1, n=400)[0]
    codes = rng.integers(0, 5, size=(400, 3))
    codes[:, 0] = np.arange(400) % 4
    coord[:, 0] += 3.0 * codes[:, 0]  # factor 0 explains most of the variance
    dense = coord @ basis
    np.testing.assert_allclose(head_eta2(coord, codes), head_eta2(dense, codes), rtol=1e-5)
    assert head_eta2(coord, codes).argmax() == 0
