"""describe_layer's streamed passes: chunks read ahead arrive in order, the on_norms hook sees
every chunk of the second pass once (the centred effect norms the unit pages histogram), and the
statistics equal a direct stream of the same stored data."""

import numpy as np
import pytest

from engine.core import neuron_analysis as na
from engine.core import second_order as so
from engine.pipeline.neuron_interpret import describe_layer

pytestmark = pytest.mark.unit


class _Info:
    def __init__(self, n, chunk, d_embed, rng):
        self.info = {"n_images": n, "image_chunk": chunk}
        self.output = rng.standard_normal((n, d_embed)).astype(np.float32)

    def lazy(self, name):  # the image embeddings the labels read
        assert name == "output"
        return self.output


class _Neurons:
    """StoredNeurons' interface over arrays in memory; records the ranges read."""

    def __init__(self, k, chunk, d_embed, rng):
        self.qs, self.scale = so.quantise(k)
        self.r = _Info(len(k), chunk, d_embed, rng)
        self.n_neurons, self.K = k.shape[1], k.shape[2]
        self.frame = rng.standard_normal((self.K, d_embed))
        self.reads = []

    def n_paths(self, layer):
        return self.K

    def q(self, layer, a, b):
        self.reads.append((a, b))
        return self.qs[a:b], self.scale[a:b]

    def directions(self, layer, v, idx):
        return v @ self.frame


def test_on_norms_sees_every_chunk_once_in_order():
    rng = np.random.default_rng(0)
    k = rng.standard_normal((103, 6, 4)).astype(np.float32)
    sn = _Neurons(k, 25, 16, rng)
    seen = []

    def hook(layer, norms):
        seen.append((layer, np.asarray(norms).copy()))

    atoms = na.text_dictionary(rng.standard_normal((30, 16)))
    d = describe_layer(sn, 3, atoms, ["a"] * 30, top=10, n_words=3, on_norms=hook)
    starts = list(range(0, 103, 25))
    assert [s[0] for s in seen] == [3] * len(starts)
    assert [len(s[1]) for s in seen] == [min(103, a + 25) - a for a in starts]
    passes = 2 * [(a, min(103, a + 25)) for a in starts]
    assert sn.reads[: len(passes)] == passes  # two passes, each in order (then the labels' reads)
    stored = so.dequantise(sn.qs, sn.scale)
    centred = np.linalg.norm(stored - stored.mean(axis=0), axis=2)  # [image, neuron]
    assert np.allclose(np.concatenate([s[1] for s in seen]), centred, atol=1e-5)
    for n in range(6):
        assert d.stats.top_image[:, n].tolist() == list(np.argsort(-centred[:, n])[:10])
    assert d.coef.shape == (6, 30) and ((d.coef != 0).sum(axis=1) <= 3).all()
