"""`segeval`: per-head segmentation scored against masks, on demo-world and folder masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from engine.cli import main
from engine.pipeline.build import BuildParams, build_store
from engine.sources import imageio, world
from engine.store import open_store

pytestmark = [pytest.mark.slow, pytest.mark.demo]


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    link = tmp_path_factory.mktemp("seg") / "artifacts" / "d"
    link.parent.mkdir()
    build_store(BuildParams(model="demo", images="synthetic:64", store=str(link), progress=False))
    return link


def test_world_masks_score_every_head_and_record_the_run(demo_store, capsys):
    with open_store(demo_store) as r:
        layers, n_heads, before = r.layers, r.info["n_heads"], r.version_path
    argv = ["segeval", "--store", str(demo_store), "--masks", "world", "--n-images", "40"]
    assert main([*argv, "--set", "L7H8,L6H0", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    with open_store(demo_store) as r:
        rows = r.query("SELECT * FROM segmentation_scores")
        runs = r.query("SELECT kind, parameters FROM runs WHERE kind = 'segeval'")
        assert r.version_path != before  # written through a new version
    assert len(rows) == len(layers) * n_heads + 2  # every head, the set, the aggregate
    assert set(rows.scope) == {"head", "set", "aggregate"}
    assert (rows.n_images == 40).all() and rows.source.str.startswith("world:40:").all()
    for m in ("pixel_acc", "miou", "map", "pointing"):
        assert rows[m].between(0, 1).all(), m
    assert len(runs) == 1 and json.loads(runs.parameters[0])["n_images"] == 40
    # the demo model's heads point at the object named by its colour (target 0.9; chance ~0.2)
    agg = out["aggregate"]
    assert agg["pointing"] >= 0.9 and agg["miou"] > 0.4
    heads = rows[rows.scope == "head"].set_index("name")
    assert heads.loc[["L7H8", "L6H0"]].shape == (2, rows.shape[1] - 1)


def test_folder_masks_same_named_pngs(demo_store, tmp_path, capsys):
    imgs, masks = tmp_path / "imgs" / "red", tmp_path / "masks" / "red"
    imgs.mkdir(parents=True), masks.mkdir(parents=True)
    b = world.generate(0, 6, seed=77, masks=True)
    for i, (im, m) in enumerate(zip(b.images, b.masks, strict=True)):
        Image.fromarray(im).save(imgs / f"{i}.jpg")
        Image.fromarray(m.astype(np.uint8) * 255).save(masks / f"{i}.png")
    Image.fromarray(b.images[0]).save(imgs / "no_mask.png")  # skipped: no mask of that name
    argv = ["segeval", "--store", str(demo_store), "--masks", str(tmp_path / "masks")]
    argv += ["--images", str(tmp_path / "imgs"), "--json", "--no-progress"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["aggregate"]["n_images"] == 6 and out["text"] == "class"
    assert out["source"] == f"folder:{tmp_path / 'imgs'}"


def test_bad_inputs_are_one_line_errors(demo_store, tmp_path, capsys):
    s = str(demo_store)
    with open_store(demo_store) as r:
        before = r.version_path
    cases = [
        ["--masks", str(tmp_path / "nope"), "--images", str(tmp_path)],
        ["--masks", str(tmp_path)],  # folder masks without --images
        ["--masks", "world", "--set", "L99H0"],
        ["--masks", "world", "--set", "label:nonexistent"],
        ["--masks", "world", "--set", "mlp"],  # a set holds heads only
        ["--masks", "world", "--n-images", "0"],
    ]
    for extra in cases:
        assert main(["segeval", "--store", s, *extra, "--no-progress"]) == 2, extra
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(cases) and all(line.startswith("error: ") for line in err)
    with open_store(demo_store) as r:
        assert r.version_path == before  # nothing written


@pytest.mark.unit
def test_mask_geometry_follows_the_model_crop():
    m = np.zeros((40, 80), bool)
    m[:, 40:60] = True  # the third quarter of a wide image: the right half of its centre crop
    crop = imageio.mask_to_crop(m, 20)  # shortest side -> 20: 40 wide, columns 10..30 kept
    assert crop.shape == (20, 20)
    assert crop[:, 10:].all() and not crop[:, :10].any()
