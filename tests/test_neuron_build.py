"""build --neurons: stored second-order effects equal the lens within their int8 bound, builds are
resumable and sharded bit for bit, verify --store bounds them and catches a corrupted one, and bad
neuron specs are one line naming the build command."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import zarr

from engine import store
from engine.cli import main as cli_main
from engine.core import second_order as so
from engine.errors import UserError
from engine.model import load_model, vision_weights
from engine.model.capture import capture_neurons, mlp_proj_weight
from engine.pipeline.build import BuildParams, build_store, plan_build
from engine.pipeline.neurons import StoredNeurons
from engine.store import schema

pytestmark = pytest.mark.unit

N, CHUNK, BATCH, NEURONS = 90, 32, 20, "0-1"


def params(link, **kw) -> BuildParams:
    kw = {"batch_size": BATCH, "image_chunk": CHUNK, "progress": False, "neurons": NEURONS, **kw}
    return BuildParams(model="tiny-test", images=f"synthetic:{N}:5", store=str(link), **kw)


def arrays_of(path) -> dict[str, np.ndarray]:
    with store.open_store(path) as r:
        return {name: r.array(name) for name in schema.ARRAYS if r.has_array(name)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    link = tmp_path_factory.mktemp("nref") / "ref"
    res = build_store(params(link))
    assert res.n_images == N
    return link


def test_stored_effects_are_the_lens_within_their_bound(reference):
    lm = load_model("tiny-test")
    w = vision_weights(lm)
    from engine.sources.collection import parse_source

    src = parse_source(f"synthetic:{N}:5")
    src.image_size = lm.dims.image_size
    ids = [0, 41, 89]
    pixels = torch.stack([src.load(i, lm.preprocess, schema.THUMB_SIZE).pixels for i in ids])
    cap, ncap = capture_neurons(lm, pixels, [], [0, 1])
    std = (cap.resid.float().var(-1, unbiased=False) + w.ln_post_eps).sqrt()
    with store.open_store(reference) as r:
        assert r.info["neuron_layers"] == [0, 1]
        sn = StoredNeurons(r)
        for layer in (0, 1):
            nb = so.neuron_bases(w, mlp_proj_weight(lm, layer), layer)
            c = so.coefficients(w, cap.attn_in, ncap.ln_std, ncap.acts[layer], nb.later)
            exact = so.effects(c, std, nb).numpy()  # [image, neuron, d_embed]
            k = np.stack([sn.k(layer, i, i + 1)[0] for i in ids])  # [image, neuron, K]
            stored = np.einsum("ink,nke->ine", k, sn.frame(layer))
            err = np.linalg.norm(stored - exact, axis=-1)
            scale = r.lazy("neuron_scale")[ids, sn.layers.index(layer)]
            bound = so.quantisation_bound(scale, sn.n_paths(layer))
            assert (err <= bound + 1e-5 * np.linalg.norm(exact, axis=-1)).all()
            assert np.linalg.norm(exact, axis=-1).max() > 0
            # frame coordinates keep norms: ||k|| = ||effect||
            assert np.allclose(
                np.linalg.norm(k, axis=-1), np.linalg.norm(stored, axis=-1), rtol=1e-3
            )


def test_resume_after_failure_is_bit_exact(tmp_path, reference):
    link = tmp_path / "s"
    with pytest.raises(RuntimeError, match="injected"):
        build_store(params(link), fail_after_chunks=1)
    res = build_store(params(link))
    assert res.resumed_chunks == 1
    a, b = arrays_of(link), arrays_of(reference)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_shards_equal_the_single_build(tmp_path, reference):
    link = tmp_path / "sh"
    first = build_store(params(link), shard=(0, 2))
    assert not first.published
    assert build_store(params(link), shard=(1, 2)).published
    a, b = arrays_of(link), arrays_of(reference)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_verify_store_bounds_and_catches_a_corrupted_effect(reference, tmp_path, capsys):
    assert cli_main(["verify", "--store", str(reference), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["neuron_ok"] and 0 < out["neuron_worst_error_over_bound"] <= 1.0
    shutil.copytree(os.path.realpath(reference), tmp_path / "v", symlinks=True)
    g = zarr.open_group(str(tmp_path / "v" / schema.STORE_ZARR), mode="r+")
    row = g["neuron_coord"][33]
    row[:, 7] = np.where(row[:, 7] > 0, -120, 120).astype(np.int8)
    g["neuron_coord"][33] = row
    assert cli_main(["verify", "--store", str(tmp_path / "v"), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and out["neuron_worst_image"] == 33


def test_no_neurons_keeps_the_build_key_and_empty_arrays(tmp_path):
    none = plan_build(params(tmp_path / "a", neurons=None))
    spelled = plan_build(params(tmp_path / "a", neurons="none"))
    built = plan_build(params(tmp_path / "a"))
    assert none.key == spelled.key != built.key
    sizes = none.sizes()
    assert sizes["neuron"] == sizes["neuron_path"] == 0
    assert schema.bytes_per_image(sizes, ["neuron_coord", "neuron_scale", "neuron_total"]) == 0
    # tiny-test: 3 layers x 4 heads, 256 neurons; layers 0 and 1 have 8 + 4 paths
    b = built.sizes()
    assert (b["neuron_path"], b["neuron"], b["neuron_k"], b["neuron_later"]) == (12, 256, 8, 2)


def test_bad_neuron_specs_are_one_line(reference, tmp_path, capsys):
    argv = ["build", "--model", "tiny-test", "--images", "synthetic:4", "--store"]
    assert cli_main([*argv, str(tmp_path / "x"), "--neurons", "2-2"]) == 2
    assert "last block" in capsys.readouterr().err
    with store.open_store(reference) as r:
        with pytest.raises(UserError, match="last block"):
            StoredNeurons(r, "1,2")
    one = tmp_path / "one"
    build_store(params(one, neurons="1-1"))
    with store.open_store(one) as r:
        with pytest.raises(UserError, match=r"layers \[0\] were not built.*--neurons 0-1") as e:
            StoredNeurons(r, "0,1")
        assert "python -m engine build --model tiny-test" in str(e.value)
    plain = tmp_path / "plain"
    build_store(params(plain, neurons=None))
    with store.open_store(plain) as r:
        with pytest.raises(UserError, match="built without neurons.*--neurons 1-1"):
            StoredNeurons(r, "1-1")


def test_interpret_neurons_writes_its_tables_from_the_stored_effects(reference, tmp_path, capsys):
    from engine.pipeline.neuron_interpret import run_neuron_interpretation

    link = tmp_path / "i"
    shutil.copytree(os.path.realpath(reference), tmp_path / "v", symlinks=True)
    store.versions_dir(link).mkdir(parents=True)
    os.rename(tmp_path / "v", store.versions_dir(link) / "v000001")
    os.symlink(os.path.join(store.versions_dir(link).name, "v000001"), link)
    rng = np.random.default_rng(0)

    def fake(s, texts):
        return rng.standard_normal((len(texts), 32)).astype(np.float32)

    res = run_neuron_interpretation(link, None, "general", top=10, n_words=4, progress=False,
                                    text_embeddings_fn=fake)  # fmt: skip
    assert res.layers == [0, 1] and res.n_neurons == 256
    with store.open_store(link) as r:
        stats = r.table("neuron_stats").sort_values(["layer", "neuron"])
        words = r.table("neuron_words")
        assert len(stats) == 2 * 256 and (words.groupby(["layer", "neuron"]).size() <= 4).all()
        # the stored statistics are those of the stored effects (neuron 9 of layer 1, by hand)
        k = StoredNeurons(r).k(1, 0, N)[:, 9]  # [image, K]
        norms = np.linalg.norm(k - k.mean(axis=0), axis=1)
        row = stats[(stats.layer == 1) & (stats.neuron == 9)].iloc[0]
        assert list(row.top_images) == list(np.argsort(-norms)[:10])
        assert np.isclose(row.threshold, np.sort(norms)[-10], rtol=1e-4)
        assert np.isclose(np.linalg.norm(row.direction), 1.0, atol=1e-4)
        assert r.runs("interpret-neurons").shape[0] == 1
    # a second run over one layer keeps the other layer's rows
    run_neuron_interpretation(link, "1-1", "general", top=5, n_words=2, progress=False,
                              text_embeddings_fn=fake)  # fmt: skip
    with store.open_store(link) as r:
        stats = r.table("neuron_stats")
        assert sorted(stats.layer.unique()) == [0, 1] and len(stats) == 512
        assert len(stats[stats.layer == 1].iloc[0].top_images) == 5
    # a store built without neurons: one line, exit 2, naming the build command
    plain = tmp_path / "plain"
    build_store(params(plain, neurons=None))
    assert cli_main(["interpret", "--store", str(plain), "--neurons", "1-1"]) == 2
    err = capsys.readouterr().err
    assert "built without neurons" in err and "--neurons 1-1" in err and len(err.splitlines()) == 1


def test_directions_are_frame_vectors_through_the_frames(reference):
    """StoredNeurons.directions (w = L⁻ᵀ v, one matmul over the paths) equals v @ Q_n with the
    frames formed explicitly."""
    rng = np.random.default_rng(3)
    with store.open_store(reference) as r:
        sn = StoredNeurons(r)
        for layer in sn.layers:
            idx = [0, 5, 77, 255]
            v = rng.standard_normal((len(idx), sn.n_paths(layer)))
            want = np.einsum("nk,nke->ne", v, sn.frame(layer, idx).astype(np.float64))
            got = sn.directions(layer, v, idx)
            assert np.allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
