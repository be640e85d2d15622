"""The notebook API (`engine.open_store`) and its example script, against a small store."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.cli import main
from engine.errors import UserError
from engine.pipeline.build import BuildParams, build_store
from engine.session import StoreSession

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    link = tmp_path_factory.mktemp("nb") / "artifacts" / "s"
    link.parent.mkdir()
    build_store(BuildParams(model="tiny-test", images="synthetic:48", store=str(link),
                            random_weights=True, progress=False, layers="2"))  # fmt: skip
    assert main(["interpret", "--store", str(link), "--no-progress", "--texts-per-head", "3"]) == 0
    return link


@pytest.mark.unit
def test_import_engine_stays_light():
    code = "import sys, engine; print(sorted(m for m in ('torch', 'open_clip', 'duckdb', 'zarr', 'pandas') if m in sys.modules))"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_tables_and_arrays(store):
    from engine import open_store

    with open_store(store) as s, StoreSession.open(store) as ref:
        heads = s.heads()
        assert list(heads.columns[:6]) == ["name", "layer", "head", "label", "labeller",
                                           "top_texts"]  # fmt: skip
        assert len(heads) == len(ref.heads()) and heads["label"].notna().all()
        assert heads["gt_eta2"].between(0, 1).all() and heads["gt_factor"].notna().all()
        top = heads["top_texts"].iloc[0]
        assert 0 < len(top) <= 3 and all(isinstance(v, float) for _, v in top)
        imgs = s.images()
        assert len(imgs) == 48 and {"image_id", "path", "class", "colour"} <= set(imgs.columns)
        l, h = ref.heads()[-1]
        x = s.contributions(l, h)
        assert x.dtype == np.float32 and x.shape == (48, ref.model_record.d_embed)
        np.testing.assert_allclose(x, s.coordinates(l, h) @ s.basis(l, h), atol=1e-6)
        assert s.textspan(l, h)["text"].tolist() == ref.reader.textspan(l, h)["text"].tolist()
        with pytest.raises(UserError, match="not stored"):
            s.contributions(0, 0)


def test_analyses_accept_ids_names_and_images(store):
    from PIL import Image

    from engine import open_store

    with open_store(store) as s:
        l, h = s.session.heads()[-1]
        by_id = s.property_neighbours(2, f"L{l}H{h}", k=3)
        assert list(by_id.columns) == ["image_id", "score", "path", "class"] and len(by_id) == 3
        assert 2 not in by_id["image_id"].tolist()  # a stored query is not its own neighbour
        thumb = Image.fromarray(s.session.thumbnails([2])[0])
        assert s.topic_segmentation(thumb, "a red shape").shape == (
            s.model_record.grid, s.model_record.grid)  # fmt: skip


def test_the_example_script_runs(store, capsys):
    runpy.run_path(str(ROOT / "docs" / "examples" / "first_hour.py"), run_name="example")["main"](
        str(store)
    )
    out = capsys.readouterr().out
    assert "contributions (48," in out and "ablate " in out
