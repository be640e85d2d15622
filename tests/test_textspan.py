"""TextSpan: planted answers, agreement with the literal algorithm, determinism, edge cases."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.textspan import project_bank, textspan, textspan_reference

pytestmark = pytest.mark.unit


def unit_rows(rng, n, d):
    r = rng.normal(size=(n, d))
    return r / np.linalg.norm(r, axis=1, keepdims=True)


def planted(rng, n_images=2000, d=64, n_texts=300, weights=(5.0, 4.0, 3.0, 2.0, 1.5), noise=0.05):
    """C = Σ_k w_k s_k R[t_k] + noise, s_k ~ N(0, 1) per image: the answer is t_k in order."""
    r = unit_rows(rng, n_texts, d)  # [text, d_embed]
    truth = rng.choice(n_texts, size=len(weights), replace=False)
    s = rng.normal(size=(n_images, len(weights)))  # [image, component]
    c = (s * np.asarray(weights)) @ r[truth]  # [image, d_embed]
    c += noise * rng.normal(size=c.shape) + 3.0  # an offset: the SVD is uncentred, C is centred
    return c.astype(np.float32), r, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_order_is_recovered(seed):
    rng = np.random.default_rng(seed)
    c, r, truth = planted(rng)
    res = textspan(c, r, n_texts=5)
    assert res.indices.tolist() == truth.tolist()
    # shares follow the planted weights: w_k² / Σ w² (+ noise), decreasing
    w2 = np.array([5.0, 4.0, 3.0, 2.0, 1.5]) ** 2
    np.testing.assert_allclose(res.variance_removed, w2 / (w2.sum() + 0.05**2 * 64), rtol=0.15)
    assert np.all(np.diff(res.variance_removed) < 0)


@pytest.mark.parametrize(
    "n_images,d,n_texts,rank", [(400, 64, 150, 80), (30, 64, 80, 80), (300, 32, 40, 8)]
)
def test_matches_literal_algorithm(n_images, d, n_texts, rank):
    rng = np.random.default_rng(7)
    c = (rng.normal(size=(n_images, d)) * rng.uniform(0.1, 3, size=d) + 1.0).astype(np.float32)
    r = unit_rows(rng, n_texts, d)
    fast = textspan(c, r, rank=rank, n_texts=10)
    ref = textspan_reference(c, r, rank=rank, n_texts=10)
    assert fast.indices.tolist() == ref.indices.tolist()
    np.testing.assert_allclose(fast.variance_removed, ref.variance_removed, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(fast.score_var, ref.score_var, rtol=1e-5)
    assert fast.total_var == pytest.approx(ref.total_var, rel=1e-6)


def test_all_texts_exhaust_the_span():
    """With full rank, picking d texts removes all variance: shares sum to 1."""
    rng = np.random.default_rng(3)
    c = rng.normal(size=(500, 16))
    r = unit_rows(rng, 40, 16)
    res = textspan(c, r, rank=16, n_texts=16)
    assert len(res) == 16
    assert res.variance_removed.sum() == pytest.approx(1.0, abs=1e-9)


def test_deterministic():
    rng = np.random.default_rng(4)
    c, r, _ = planted(rng)
    a, b = textspan(c, r), textspan(c.copy(), r.copy())
    assert a.indices.tolist() == b.indices.tolist()
    np.testing.assert_array_equal(a.variance_removed, b.variance_removed)


def test_more_steps_than_texts_and_no_repeats():
    rng = np.random.default_rng(5)
    c = rng.normal(size=(200, 32)).astype(np.float32)
    r = unit_rows(rng, 6, 32)
    res = textspan(c, r, n_texts=10)
    assert len(res) == 6 and len(set(res.indices.tolist())) == 6


def test_duplicate_text_is_not_picked_twice():
    rng = np.random.default_rng(6)
    c, r, truth = planted(rng, n_texts=50)
    r = np.vstack([r, r[truth[0]]])  # an exact duplicate of the best text
    res = textspan(c, r, n_texts=5)
    picks = res.indices.tolist()
    assert picks[0] in (truth[0], 50)  # either copy, then never the other
    assert {truth[0], 50} - {picks[0]} <= set(range(51)) - set(picks)
    assert picks[1:] == truth[1:].tolist()


def test_fewer_images_than_rank_and_small_d_embed():
    rng = np.random.default_rng(8)
    c = rng.normal(size=(5, 12)).astype(np.float32)  # 5 images < rank 80; d_embed 12 < 80
    r = unit_rows(rng, 30, 12)
    res = textspan(c, r)
    ref = textspan_reference(c, r)
    assert res.indices.tolist() == ref.indices.tolist()
    assert 0 < len(res) <= 5  # rank capped at 5 images: at most 5 directions
    assert res.variance_removed.sum() == pytest.approx(1.0, abs=1e-6)


def test_zero_and_constant_heads_get_no_texts():
    r = unit_rows(np.random.default_rng(9), 20, 16)
    for c in (np.zeros((100, 16), np.float32), np.ones((100, 16), np.float32)):
        res = textspan(c, r)
        assert len(res) == 0 and res.total_var == 0.0


def test_single_image_and_bad_shapes():
    r = unit_rows(np.random.default_rng(10), 5, 8)
    assert len(textspan(np.ones((1, 8)), r)) == 0
    with pytest.raises(ValueError, match="d_embed"):
        textspan(np.ones((3, 8)), np.ones((2, 9)))
    with pytest.raises(ValueError):
        textspan(np.ones(8), r)


def test_rank_capped_at_numerical_rank_of_low_rank_fp16_head():
    """A head's output has rank <= d_head; fp16 storage noise must not widen R's projection."""
    rng = np.random.default_rng(11)
    d, true_rank = 64, 8
    basis = np.linalg.qr(rng.normal(size=(d, true_rank)))[0]  # [d_embed, 8]
    c = (rng.normal(size=(3000, true_rank)) * np.linspace(3, 0.5, true_rank)) @ basis.T + 0.5
    c = c.astype(np.float16).astype(np.float32)  # stored as fp16: noise in every direction
    r = unit_rows(rng, 200, d)
    capped = textspan(c, r, rank=80)
    exact = textspan(c, r, rank=true_rank + 1, rtol=0.0)  # the uncentred span includes the mean
    assert capped.indices.tolist() == exact.indices.tolist()
    np.testing.assert_allclose(capped.variance_removed, exact.variance_removed, rtol=1e-6)
    # without the cap the noise directions enter R's projection and change the picks' shares
    noisy = textspan(c, r, rank=80, rtol=0.0)
    assert len(noisy) != len(exact) or not np.allclose(
        noisy.variance_removed, exact.variance_removed, rtol=1e-3
    )
    ref = textspan_reference(c, r, rank=80)
    assert ref.indices.tolist() == capped.indices.tolist()


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    d_head=st.sampled_from([4, 8, 16]),
    rank=st.sampled_from([3, 10, 80]),
    offset=st.floats(0.0, 3.0),
)
def test_in_head_coordinates_equals_d_embed(seed, d_head, rank, offset):
    """A stored head is C = X B (X [image, d_head], B [d_head, d_embed] orthonormal rows):
    TextSpan on (X, R Bᵀ) picks the same texts with the same shares as on (C, R)."""
    rng = np.random.default_rng(seed)
    d_embed, n = 64, 500
    q, _ = np.linalg.qr(rng.normal(size=(d_embed, d_head)))
    basis = q.T  # [d_head, d_embed]
    r = unit_rows(rng, 200, d_embed)
    # a head whose variance follows a few texts' directions inside its span, plus an offset
    x = rng.normal(size=(n, d_head)) * np.geomspace(3.0, 0.1, d_head) + offset
    c = x @ basis  # [image, d_embed]
    want = textspan(c.astype(np.float32), r, rank=rank, n_texts=6)
    got = textspan(x.astype(np.float32), project_bank(r, basis), rank=rank, n_texts=6)
    assert got.indices.tolist() == want.indices.tolist()
    np.testing.assert_allclose(got.variance_removed, want.variance_removed, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got.total_var, want.total_var, rtol=1e-5)
    ref = textspan_reference(c, r, rank=rank, n_texts=6)  # and the literal algorithm agrees
    assert got.indices.tolist() == ref.indices.tolist()
