"""Neuron descriptions: streamed statistics equal their in-memory definitions, the principal
direction's sign rule, η² equals the heads' definition, OMP recovers a planted sparse mix."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from engine.core import groundtruth
from engine.core import neuron_analysis as na
from engine.core import second_order as so

pytestmark = pytest.mark.unit


def _stream(k, step, top, codes=None, n_values=None, budget=None):
    """Stream k [image, neuron, K] in its stored form; returns (stats, the stored k). budget:
    waiting entries that make the running top merge (default: top x neurons, at least 4096)."""
    q, scale = so.quantise(k)
    st = na.NeuronStats(k.shape[1], k.shape[2], top, n_values or [])
    if budget is not None:
        st._top.budget = budget
    for a in range(0, len(k), step):
        cs = None if codes is None else [codes[a : a + step, f] for f in range(codes.shape[1])]
        st.update_mean(q[a : a + step], scale[a : a + step], cs)
    for a in range(0, len(k), step):
        st.update_top(q[a : a + step], scale[a : a + step], a)
    st.finish()
    return st, so.dequantise(q, scale)


@pytest.mark.parametrize("budget", [None, 7])  # merging only at the end, or every few blocks
def test_streamed_top_images_and_norms_equal_the_definition(budget):
    rng = np.random.default_rng(0)
    k = rng.standard_normal((230, 5, 6)).astype(np.float32)
    st, k = _stream(k, 37, 20, budget=budget)
    centred = k - k.mean(axis=0)
    norms = np.linalg.norm(centred, axis=2)  # [image, neuron]
    for n in range(5):
        order = np.argsort(-norms[:, n])[:20]
        assert st.top_image[:, n].tolist() == list(order)
        assert np.allclose(st.top_k[:, n].numpy(), centred[order, n], atol=1e-5)
        assert np.isclose(st.threshold[n], norms[order[-1], n], rtol=1e-5)
    assert np.allclose(st.mean_norm, norms.mean(axis=0), rtol=1e-5)
    assert np.allclose(st.mean, k.mean(axis=0), atol=1e-6)


def test_eta2_equals_the_heads_definition():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 3, (300, 2))
    k = rng.standard_normal((300, 4, 3)).astype(np.float32)
    k[:, 1] += 3 * codes[:, :1]  # neuron 1 carries factor 0
    st, k = _stream(k, 64, 10, codes, [3, 3])
    eta = st.eta2()
    for n in range(4):
        assert np.allclose(eta[:, n], groundtruth.head_eta2(k[:, n], codes), atol=1e-6)
    assert eta[0, 1] > 0.8 > eta[1, 1]


def test_principal_direction_sign_follows_the_majority():
    rng = np.random.default_rng(2)
    v = np.array([0.6, 0.8, 0.0])
    s = np.concatenate([np.full(70, 1.0), np.full(30, -3.0)])  # most positive, larger negatives
    top = (s[:, None] * v + 0.01 * rng.standard_normal((100, 3)))[:, None]  # [top, neuron, K]
    got = na.principal_directions(top)[0]
    assert np.allclose(got, v, atol=1e-2)  # the sum is negative; the majority decides
    assert np.allclose(na.principal_directions(-top)[0], -v, atol=1e-2)


def test_omp_recovers_a_planted_sparse_mix():
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((200, 64))
    atoms = na.text_dictionary(emb)
    assert np.allclose(np.linalg.norm(atoms, axis=1), 1)  # per-text normalisation
    d = 0.8 * atoms[17] - 0.5 * atoms[123] + 0.3 * atoms[5]
    d /= np.linalg.norm(d)
    coef = na.sparse_text(d[None], atoms, 3)[0]
    assert set(np.flatnonzero(coef)) == {17, 123, 5}
    assert coef[17] > 0 > coef[123]


def test_batched_omp_equals_scikit_learn():
    import torch
    from sklearn.linear_model import orthogonal_mp_gram

    rng = np.random.default_rng(4)
    atoms = na.text_dictionary(rng.standard_normal((150, 40)))
    y = rng.standard_normal((9, 40))
    gram, xy = atoms @ atoms.T, y @ atoms.T  # [text, text], [target, text]
    ours = na.batched_omp(torch.from_numpy(atoms), torch.from_numpy(y), 7, block=4).numpy()
    ref = orthogonal_mp_gram(gram, xy.T, n_nonzero_coefs=7).T  # [target, text]
    assert np.array_equal(ours != 0, ref != 0)  # the same picks
    assert np.allclose(ours, ref, atol=1e-10)  # refits are fp64
    assert ((ours != 0).sum(axis=1) == 7).all()


def test_batched_omp_without_the_gram_gives_the_same_codes(monkeypatch):
    import torch

    rng = np.random.default_rng(5)
    atoms = torch.from_numpy(na.text_dictionary(rng.standard_normal((120, 30))))
    y = torch.from_numpy(rng.standard_normal((6, 30)))
    with_gram = na.batched_omp(atoms, y, 5).numpy()
    monkeypatch.setattr(na, "GRAM_MAX_TEXTS", 10)
    assert np.allclose(na.batched_omp(atoms, y, 5).numpy(), with_gram, atol=1e-10)


@settings(max_examples=60, deadline=None)
@given(
    n_img=hs.integers(1, 50), n_neurons=hs.integers(1, 4), top=hs.integers(1, 12),
    block=hs.integers(1, 9), budget=hs.integers(1, 40), ties=hs.booleans(),
    seed=hs.integers(0, 2**16),
)  # fmt: skip
def test_running_top_keeps_the_largest_norms_of_the_stream(
    n_img, n_neurons, top, block, budget, ties, seed
):
    """Whatever the blocks and merge points: per neuron the `top` largest norms (as a multiset,
    so ties may pick either image), descending, each with its own image and centred k."""
    rng = np.random.default_rng(seed)
    if ties:
        norms = rng.integers(0, 4, (n_img, n_neurons)).astype(np.float32)
    else:
        norms = rng.random((n_img, n_neurons), dtype=np.float32)
    centred = rng.standard_normal((n_img, 3, n_neurons)).astype(np.float32)
    t = na._RunningTop(n_neurons, 3, top)
    t.budget = budget
    for a in range(0, n_img, block):
        t.add(torch.from_numpy(norms[a : a + block]), torch.from_numpy(centred[a : a + block]), a)
    norm, image, k = (x.numpy() for x in t.dense())
    m = min(top, n_img)
    for n in range(n_neurons):
        assert np.array_equal(norm[:m, n], np.sort(norms[:, n])[::-1][:m])
        img = image[:m, n]
        assert len(set(img.tolist())) == m
        assert np.array_equal(norms[img, n], norm[:m, n])
        assert np.array_equal(k[:m, n], centred[img, :, n])
        assert (image[m:, n] == -1).all() and np.isneginf(norm[m:, n]).all()


def test_single_threaded_restores_the_thread_count_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(ValueError), na.single_threaded():
        assert torch.get_num_threads() == 1
        raise ValueError
    assert torch.get_num_threads() == before
    st, _ = _stream(np.ones((10, 2, 3), np.float32), 4, 3)
    assert torch.get_num_threads() == before
