"""SigLIP stores: a build of an attention-pooled tower writes the declared pooled layout (shared
basis, d_coord-wide coordinates, per-image attention-bias and pool-MLP terms, the tokenizer in
the model record), `verify --store` sums the terms back to the output, and stores written before
metadata version 3 read through the declared upgrade step."""

import gc
import json

import numpy as np
import pytest
import torch

from engine.cli import main as cli_main
from engine.errors import UserError
from engine.model import decompose_images
from engine.model.tokenizers import STANDIN_NAME
from engine.pipeline.build import build_store
from engine.pipeline.build_plan import BuildParams
from engine.sources.collection import parse_source
from engine.store import open_store, schema

TINY = "ClipInterpretTinySigLIP"


def _build(tmp_path, model=TINY, n=6, layers="all", name="sig"):
    params = BuildParams(
        model=model, images=f"synthetic:{n}", store=str(tmp_path / name), layers=layers,
        random_weights=True, batch_size=4, workers=1, progress=False,
    )  # fmt: skip
    build_store(params)
    return tmp_path / name


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("siglip"), layers="1-2")


@pytest.mark.unit
def test_a_tiny_siglip_store_declares_its_pooled_layout(tiny_store):
    with open_store(tiny_store) as r:
        m, rec = r.meta, r.model_record
        assert m.pooling == "map" and m.basis_shared and r.pooled
        assert m.d_coord == r.d_coord == rec.d_embed == 64  # the pool's output map: full rank
        assert rec.tokenizer == STANDIN_NAME  # the stand-in made its text embeddings
        assert r.layers == [1, 2] and r.rest_layers == [0]
        assert r.lazy("basis").shape == (1, 1, 64, 64)  # ONE basis, not one per head
        assert r.lazy("coord").shape == (6, 2, 4, 64)
        assert r.lazy("attn_bias_image").shape == (6, 2, 64)
        assert r.lazy("pool_mlp").shape == (6, 64)
        assert np.array_equal(r.basis(1, 0), r.basis(2, 3))
        b = r.basis(1, 0)
        assert np.allclose(b @ b.T, np.eye(64), atol=1e-5)  # orthonormal rows
        assert np.all(r.std() == 1.0) and not r.array("attn_bias").any()
        assert r.basis_per_head().shape == (2, 4, 64, 64)


@pytest.mark.unit
def test_stored_heads_are_the_models_pooled_heads(tiny_store):
    """coord @ basis of the stored heads equals the pooled decomposition recomputed from the
    model on the same images (fp16 storage), and the pool-MLP term is the model's own."""
    from engine.session import StoreSession

    s = StoreSession.open(tiny_store)
    try:
        lm = s.model()
        src = parse_source("synthetic:6")
        src.image_size = lm.dims.image_size
        pixels = torch.stack([src.load(i, lm.preprocess, 64).pixels for i in range(3)])
        d = decompose_images(lm, pixels, [1, 2])
        r = s.reader
        for li, layer in enumerate([1, 2]):
            for h in range(4):
                stored = r.coords(layer, h)[:3] @ r.basis(layer, h)
                ref = d.head_out[:, li, h].numpy()
                assert np.abs(stored - ref).max() <= 2e-3 * np.abs(ref).max() + 1e-6
        pool_mlp = r.array("pool_mlp")[:3].astype(np.float32)
        assert np.allclose(pool_mlp, d.pool_mlp.numpy(), rtol=2e-3, atol=1e-4)
    finally:
        s.close()


@pytest.mark.unit
def test_verify_store_sums_the_pooled_terms_and_can_fail(tiny_store, tmp_path, capsys):
    assert cli_main(["verify", "--store", str(tiny_store), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] and res["pooling"] == "map" and res["d_coord"] == 64
    assert res["worst_error_over_bound"] <= 1.0 and res["relative_error"] < 1e-3
    assert 0 < res["pool_mlp_share_mean"] <= res["pool_mlp_share_max"]
    # without the pool-MLP term the stored terms do not sum to the output: verify fails
    import shutil

    import zarr

    with open_store(tiny_store) as r:
        src = r.version_path
    shutil.copytree(src, tmp_path / "v")
    g = zarr.open_group(str(tmp_path / "v" / schema.STORE_ZARR), mode="r+")
    g["pool_mlp"][...] = 0
    assert cli_main(["verify", "--store", str(tmp_path / "v"), "--json"]) == 1
    assert not json.loads(capsys.readouterr().out)["ok"]


@pytest.mark.unit
def test_a_class_token_store_has_no_pooled_arrays(tmp_path):
    from engine.store.random_store import write_random_store

    version = write_random_store(tmp_path / "r", n_images=4, progress=False)
    with open_store(tmp_path / "r") as r:
        assert r.meta.pooling == "class_token" and not r.meta.basis_shared and not r.pooled
        assert r.d_coord == r.model_record.d_head
        assert not r.has_array("pool_mlp")
        with pytest.raises(UserError, match="attention-pooled"):
            r.array("pool_mlp")
    assert version.is_dir()


@pytest.mark.unit
def test_metadata_before_version_3_reads_as_a_class_token_store():
    """The declared upgrade steps: stores of META_VERSION 1 and 2 are class-token stores with
    per-head bases d_head wide, and their models row (no tokenizer column) reads with the legacy
    name."""
    meta = {"schema_version": 2, "layers": [2, 3], "image_chunk": 8, "thumb_size": 64,
            "images_source": "s", "built_at": "t", "run_id": "r", "code_version": "c",
            "build_key": "k", "factors": None, "image_set_hash": "h", "n_skipped": 0,
            "reconstruction_error": 0.0, "reconstruction_tolerance": 1e-4,
            "random_data": False, "meta_version": 1}  # fmt: skip
    rows = {k: json.dumps(v) for k, v in meta.items()}
    m = schema.StoreMeta.from_rows(rows)
    assert (m.pooling, m.d_coord, m.basis_shared) == ("class_token", None, False)
    assert schema.meta_version_of(rows) == 1
    row = {"model_spec": "x", "arch": "a", "weights_hash": "h", "random_weights": False,
           "n_layers": 4, "n_heads": 2, "d_model": 8, "d_head": 4, "d_embed": 8,
           "image_size": 32, "patch_size": 8, "grid": 4}  # fmt: skip
    m2 = schema.StoreMeta.from_rows({**rows, "meta_version": "2", "neuron_layers": "[]"})
    assert (m2.pooling, m2.d_coord, m2.basis_shared) == ("class_token", None, False)
    for v in (1, 2):
        rec = schema.ModelRecord.from_row(row, meta_version=v)
        assert rec.tokenizer == schema.LEGACY_TOKENIZER
    with pytest.raises(UserError, match="lacks tokenizer"):  # a v3 store must record it
        schema.ModelRecord.from_row(row, meta_version=schema.TOKENIZER_SINCE)


@pytest.mark.exact
@pytest.mark.slow
def test_a_vit_b16_siglip_store_at_random_init(tmp_path, capsys):
    """The real architecture: 2 images, the last 2 layers' heads, verified from the store."""
    link = _build(tmp_path, model="ViT-B-16-SigLIP", n=2, layers="2", name="b16")
    try:
        with open_store(link) as r:
            assert r.meta.pooling == "map" and r.d_coord == 768
            assert r.lazy("coord").shape == (2, 2, 12, 768)
            assert r.lazy("basis").shape == (1, 1, 768, 768)
        assert cli_main(["verify", "--store", str(link), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["ok"]
    finally:
        gc.collect()


# ------------------------------------------------------------------ readers of a SigLIP store


@pytest.fixture(scope="module")
def tiny_session(tiny_store):
    from engine.session import StoreSession

    s = StoreSession.open(tiny_store)
    yield s
    s.close()


@pytest.mark.unit
def test_the_five_analyses_run_on_a_siglip_store(tiny_session):
    s = tiny_session
    q = s.query_from_store(0)
    heads = [(2, 0), (2, 3)]
    r = s.property_neighbours(q, heads, k=3)
    assert len(r.index) == 3 and 0 not in r.index  # the query is left out of its own neighbours
    per_head = s.head_image_neighbours(q, heads, k=2)
    assert len(per_head) == 2 and all(len(x.index) == 2 for x in per_head)
    assert len(s.head_text_neighbours((1, 2), "a red circle", k=4).index) == 4
    topic = s.topic_segmentation(q, "a red circle")
    grid = s.model_record.grid
    assert topic.shape == (grid, grid) and np.isfinite(topic).all()
    # the maps are each head's pooled term spread over the patches: they sum to head_out · text
    direction = s.text_embeddings(["a red circle"])[0]
    maps = s.maps(q, direction)  # [layer, head, grid, grid]
    live = s.query_image(q).head_out @ direction  # [layer, head]
    assert np.allclose(maps.sum(axis=(-1, -2)), live, atol=1e-5 * np.abs(live).max() + 1e-7)
    contrast = s.contrastive_segmentation(q, "a red circle", "a blue square", heads=heads)
    assert contrast.shape == (grid, grid) and np.abs(contrast).max() > 0


@pytest.mark.unit
def test_the_per_pool_head_view_sums_to_the_embedding(tiny_session):
    s = tiny_session
    q = s.query_from_store(1)
    v = s.pool_head_view(q, ["a red circle", "a blue square"])
    n_pool_heads = s.model().extra["n_pool_heads"]
    assert v.contrib.shape == (n_pool_heads, s.model_record.d_embed)
    assert np.allclose(v.contrib.sum(0) + v.proj_bias + v.pool_mlp, v.output, atol=1e-5)
    assert np.isclose(v.share.sum(), 1.0) and v.text_scores.shape == (n_pool_heads, 2)
    # the live query's output is the stored output of the same image (thumbnail or source)
    share = s.pool_mlp_share()
    out, mlp = s.reader.output(), s.reader.array("pool_mlp").astype(np.float32)
    want = np.linalg.norm(mlp, axis=1) / np.linalg.norm(out, axis=1)
    assert share["n_images"] == 6 and np.isclose(share["mean"], want.mean(), rtol=1e-5)
    assert 0 < share["max"] <= want.max() + 1e-6


@pytest.mark.unit
def test_ablation_components_of_a_siglip_store_sum_to_the_output(tiny_session):
    out, comps = tiny_session.components()
    assert {"pool_mlp", "L1.attn_bias", "L2H3", "L0.attn", "ln_bias"} <= set(comps.names)
    assert comps["L1.attn_bias"].form == "dense"  # per image in a pooled store
    total = comps.total()
    assert np.abs(total - out).max() <= 2e-3 * np.linalg.norm(out, axis=1).max()
    assert comps.select("pool_mlp,L2H1") == ["L2H1", "pool_mlp"]


@pytest.mark.slow
def test_interpret_ablate_and_segeval_on_a_siglip_store(tiny_store, tmp_path, capsys):
    import shutil

    link = tmp_path / "s"
    with open_store(tiny_store) as r:
        shutil.copytree(r.version_path, tmp_path / ".s.versions" / r.version_path.name)
        (link).symlink_to(f".s.versions/{r.version_path.name}")
    assert cli_main(["interpret", "--store", str(link), "--no-progress", "--json"]) == 0
    capsys.readouterr()
    with open_store(link) as r:
        ts = r.textspan()
        assert set(zip(ts["layer"], ts["head"], strict=True)) == {
            (l, h) for l in (1, 2) for h in range(4)
        }
        assert len(r.head_labels()) == 8
    assert cli_main(["ablate", "--store", str(link), "--ablate", "L2H1,pool_mlp",
                     "--random", "2", "--json"]) == 0  # fmt: skip
    res = json.loads(capsys.readouterr().out)
    assert "pool_mlp" in json.dumps(res)
    assert cli_main(["segeval", "--store", str(link), "--masks", "world", "--n-images", "3",
                     "--no-progress", "--json"]) == 0  # fmt: skip
    seg = json.loads(capsys.readouterr().out)
    assert seg


@pytest.mark.unit
def test_a_store_of_the_stand_in_tokenizer_refuses_another(tiny_session):
    from dataclasses import replace

    from engine.session.model import check_tokenizer

    lm = tiny_session.model()
    check_tokenizer(tiny_session.model_record, lm)  # the same stand-in: fine
    other = replace(tiny_session.model_record, tokenizer="google/siglip-base-patch16-224")
    with pytest.raises(UserError, match="text embeddings were made by"):
        check_tokenizer(other, lm)


@pytest.mark.unit
def test_the_notebook_offers_the_per_pool_head_view(tiny_store):
    from engine import open_store as open_notebook

    with open_notebook(tiny_store) as s:
        df = s.pool_heads(2, ["a red circle"])
        assert list(df.columns) == ["pool_head", "norm", "share", "a red circle"]
        assert len(df) == s.model().extra["n_pool_heads"] and np.isclose(df["share"].sum(), 1)
        assert s.coordinates(2, 1).shape == (6, 64)


@pytest.mark.unit
def test_unit_maps_of_a_pooled_layer_sum_to_each_heads_term(tiny_session):
    """The unit pages' maps on a SigLIP store: each head along its own direction, through the
    frozen pool; every map sums to head_out · direction (no class token)."""
    from engine.model.timm_tower import capture_pooled
    from engine.session.pooled import layer_maps

    s = tiny_session
    lm, w = s.model(), s.vision_weights()
    src = parse_source("synthetic:6")
    src.image_size = lm.dims.image_size
    pixels = torch.stack([src.load(i, lm.preprocess, 64).pixels for i in range(2)])
    dirs = torch.randn(4, lm.dims.d_embed, generator=torch.Generator().manual_seed(0))
    maps, cls = layer_maps(w, capture_pooled(lm.model, pixels, [2]), 2, dirs)
    assert maps.shape == (2, 4, lm.dims.grid**2) and not cls.any()
    want = torch.einsum("ihe,he->ih", decompose_images(lm, pixels, [2]).head_out[:, 0], dirs)
    assert torch.allclose(maps.sum(-1), want, atol=1e-5 * float(want.abs().max()))


@pytest.mark.slow
def test_visualise_refuses_a_siglip_store_in_one_line(tiny_store, tmp_path, capsys):
    import shutil

    with open_store(tiny_store) as r:
        shutil.copytree(r.version_path, tmp_path / ".v.versions" / r.version_path.name)
    (tmp_path / "v").symlink_to(f".v.versions/{r.version_path.name}")
    assert cli_main(["interpret", "--store", str(tmp_path / "v"), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli_main(["visualise", "--store", str(tmp_path / "v"), "--units", "L2H1",
                     "--steps", "1", "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "attention-pooled (SigLIP)" in err[0]


@pytest.mark.unit
def test_neurons_on_a_siglip_build_are_refused_in_one_line(tmp_path, capsys):
    code = cli_main(["build", "--model", TINY, "--random-weights", "--images", "synthetic:2",
                     "--neurons", "0-1", "--store", str(tmp_path / "n"), "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "class-token tower" in err[0]
    assert not (tmp_path / "n").exists()  # nothing published
