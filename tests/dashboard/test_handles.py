"""Dashboard modules that need no running app: paper-model lookups, upload notes, the query
image, store handles that reopen stale readers."""

from __future__ import annotations

import io
import os
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from dashboard import paper, query, uploads
from engine.errors import UserError

pytestmark = pytest.mark.dashboard


class FakeStore:
    """What paper.py reads of a store session: its model record."""

    def __init__(self, spec: str, random_weights: bool = False):
        from types import SimpleNamespace

        self.model_record = SimpleNamespace(model_spec=spec, random_weights=random_weights)


def test_paper_model_and_reference_tables():
    s = FakeStore("ViT-B-32/openai")
    assert paper.paper_model(s) == ("ViT-B-32", "openai")
    labels = paper.reference_labels(s)
    assert len(labels) == 48 and set(l for l, _ in labels) == {8, 9, 10, 11}
    props = paper.reference_properties(s)
    assert props and all(all(8 <= l <= 11 for l, _ in hs) for hs in props.values())
    # random init, the demo model and non-paper tags have no published figures
    for other in (
        FakeStore("ViT-B-32/openai", True),
        FakeStore("demo"),
        FakeStore("ViT-B-32/laion2b_s34b_b79k"),
        FakeStore("ViT-B-32:/x.safetensors"),
    ):
        assert paper.paper_model(other) is None
        assert paper.reference_labels(other) == {} and paper.reference_properties(other) == {}


def test_paper_scores_are_the_published_counts():
    p = paper.PAPER_SCORES.set_index("model")
    assert p.loc["ViT-B-32 OpenAI", "entanglement"] == pytest.approx(21 / 48)
    assert p.loc["ViT-L-14 LAION-2B", "association"] == pytest.approx(36 / 64)
    # Tables 1 and 2 print the counts' ratios truncated to three decimals
    table1 = [0.437, 0.52, 0.5, 0.541, 0.359, 0.343]
    table2 = [0.437, 0.145, 0.354, 0.166, 0.453, 0.562]
    trunc = (paper.PAPER_SCORES[["entanglement", "association"]] * 1000).apply(np.floor) / 1000
    assert trunc["entanglement"].tolist() == pytest.approx(table1)
    assert trunc["association"].tolist() == pytest.approx(table2)


def test_conversion_notes():
    rgb = np.zeros((8, 8, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    assert uploads.conversion_notes(buf.getvalue()) == ()
    buf = io.BytesIO()
    Image.fromarray(rgb[..., 0]).save(buf, format="PNG")
    assert "converted to RGB" in uploads.conversion_notes(buf.getvalue())[0]
    assert uploads.conversion_notes(b"garbage") == ()


def test_query_crop_is_the_models_centre_crop():
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255  # the centre square is white, the sides black
    q = query.QueryImage(Image.fromarray(wide), "x", "wide")
    crop = q.crop(50)
    assert crop.shape == (50, 50, 3) and crop.min() > 200


def test_stale_session_is_closed_and_its_version_collected(tmp_path):
    """A cached store session of a superseded version is closed on the next open, so gc can
    delete it."""
    from dashboard import stores
    from engine.store import mutate_store
    from tests.dashboard.conftest import paper_shaped_store

    link = tmp_path / "s"
    paper_shaped_store(link, n_images=8)
    try:
        old = stores.open_store(str(link))
        assert stores.open_store(str(link)) is old  # cached while current
        v1 = old.version_path
        for _ in range(2):  # v2, v3: gc would delete v1 but the cached reader holds it
            with mutate_store(link):
                pass
        assert v1.is_dir()
        new = stores.open_store(str(link))
        assert new is not old and new.version_path == Path(os.path.realpath(link))
        assert stores.session(str(new.version_path)) is new
        with pytest.raises(duckdb.ConnectionException):
            old.reader.query("SELECT 1")  # closed
        with pytest.raises(UserError, match="store changed"):
            stores.session(str(v1))
        with mutate_store(link):  # the next publication collects v1 (no reader holds it now)
            pass
        assert not v1.exists()
    finally:
        stores.sessions().close_all()
