"""Neuron labels from their response: the streamed response equals its covariance definition,
its blocks cover the collection evenly, a planted neuron is labelled by what drives it (not by
what it writes), and the label rule is the heads' majority rule."""

import numpy as np
import pytest

from engine.core import labels
from engine.core import neuron_analysis as na
from engine.core import neuron_labels as nl
from engine.core import second_order as so

pytestmark = pytest.mark.unit


def _response(k, x, v, blocks):
    """Stream k [image, neuron, K] in its stored form over `blocks`; (response, the stored k)."""
    q, scale = so.quantise(k)
    m = nl.ResponseMoments(v, x.shape[1])
    for a, b in blocks:
        m.update(q[a:b], scale[a:b], x[a:b])
    return m.response(), so.dequantise(q, scale)


def test_streamed_response_is_the_covariance_of_the_effect_with_the_unit_embedding():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((150, 4, 5)).astype(np.float32)  # [image, neuron, K]
    x = 3 + rng.standard_normal((150, 7)).astype(np.float32)  # [image, d_embed]
    v = rng.standard_normal((4, 5))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    got, k = _response(k, x, v, [(0, 64), (64, 128), (128, 150)])
    xh = x / np.linalg.norm(x, axis=1, keepdims=True)
    for n in range(4):
        p = (k[:, n] - k[:, n].mean(axis=0)) @ v[n]  # the effect along v, centred
        want = p @ (xh - xh.mean(axis=0))  # Σ_i p_i (x̂_i - x̄)
        assert np.allclose(got[n], want, rtol=1e-4, atol=1e-4)
    flipped, _ = _response(k, x, -v, [(0, 150)])
    assert np.allclose(flipped, -got, rtol=1e-4, atol=1e-4)  # the sign follows the direction
    with pytest.raises(ValueError, match="no images"):
        nl.ResponseMoments(v, 7).response()


def test_blocks_spread_evenly_and_take_everything_that_fits():
    assert nl.response_blocks(2000, 1024, 4096) == [(0, 1024), (1024, 2000)]
    got = nl.response_blocks(50_000, 1024, 4096)  # 49 blocks, 4 kept
    assert len(got) == 4 and got[0] == (0, 1024) and got[-1] == (49152, 50000)
    starts = [a for a, _ in got]
    assert all(b - a >= 1024 * 14 for a, b in zip(starts, starts[1:], strict=False))  # spread
    assert nl.response_blocks(10, 3, 2) == [(0, 3)]
    assert nl.response_blocks(0, 3) == [] and nl.response_blocks(5, 0) == []


def test_a_planted_neuron_is_labelled_by_what_drives_it_not_by_what_it_writes():
    """Images vary along a 'size' and a 'colour' text direction; the neuron fires on large
    images but writes along the colour direction. Its OMP words name colour; its label is size."""
    rng = np.random.default_rng(1)
    d, n_img = 16, 600
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    size_dir, colour_dir, common = basis[0], basis[1], basis[2]
    texts = [common + s * size_dir + 0.1 * rng.standard_normal(d) for s in (1, 1, 1, -1, -1, -1)]
    texts += [common + c * colour_dir + 0.1 * rng.standard_normal(d) for c in (1, 1, 1, -1, -1)]
    cats = ["size"] * 6 + ["colour"] * 5
    atoms = na.text_dictionary(np.array(texts))
    size = rng.choice([-1.0, 1.0], n_img)
    colour = rng.choice([-1.0, 1.0], n_img)
    x = 5 * common + size[:, None] * size_dir + colour[:, None] * colour_dir
    x += 0.2 * rng.standard_normal((n_img, d))  # [image, d_embed]
    # frame K = 2: coordinate 0 writes colour_dir; the neuron fires on large images
    act = np.maximum(size, 0) * (1 + 0.1 * rng.standard_normal(n_img))
    k = np.stack([act, 0.05 * rng.standard_normal(n_img)], axis=1)[:, None]  # [image, 1, K]
    frame = np.stack([colour_dir, basis[3]])  # Q [K, d_embed]
    v = na.principal_directions((k - k.mean(axis=0))[np.argsort(-act)[:50]])  # [1, K]
    written = v @ frame  # what it writes: [1, d_embed]
    words = na.sparse_text(written / np.linalg.norm(written), atoms, 3)[0]
    assert cats[int(np.argmax(np.abs(words)))] == "colour"
    resp, _ = _response(k.astype(np.float32), x.astype(np.float32), v, [(0, n_img)])
    idx, cos = nl.response_texts(resp, atoms, 5)
    assert [cats[i] for i in idx[0][:3]] == ["size"] * 3 and (np.diff(cos[0]) <= 0).all()
    assert nl.response_labels(idx, cos, cats) == ["size"]


def test_the_label_is_the_heads_majority_rule_over_the_best_texts():
    cats = ["colour", "size", "colour", "distractor", "size", "shape"]
    idx = np.array([[0, 2, 1, 4, 5], [1, 4, 0, 2, 5], [3, 3, 3, 0, 1], [0, 1, 5, 4, 2]])
    cos = np.array([[0.5, 0.4, 0.1, 0.05, 0.0], [0.3, 0.3, 0.3, 0.05, 0.0],
                    [0.9, 0.8, 0.7, 0.1, 0.0], [0.3, 0.3, 0.3, 0.01, -0.5]])  # fmt: skip
    got = nl.response_labels(idx, cos, cats)
    want = [
        labels.offline_label([cats[i] for i in r], np.clip(c, 0, None))
        for r, c in zip(idx, cos, strict=True)
    ]
    assert got == want == ["colour", "size", labels.MIXED, labels.MIXED]
