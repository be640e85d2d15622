"""dashboard/common.py helpers that need no running app: paper-model lookups, upload notes."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from tests.dashboard.conftest import ROOT

sys.path.insert(0, str(ROOT / "dashboard"))
import common  # noqa: E402

pytestmark = pytest.mark.dashboard


class FakeStore:
    def __init__(self, spec: str, random_weights: bool = False):
        self.info = {"model_spec": spec, "random_weights": random_weights}


def test_paper_model_and_reference_tables():
    s = FakeStore("ViT-B-32/openai")
    assert common.paper_model(s) == ("ViT-B-32", "openai")
    labels = common.reference_labels(s)
    assert len(labels) == 48 and set(l for l, _ in labels) == {8, 9, 10, 11}
    props = common.reference_properties(s)
    assert props and all(all(8 <= l <= 11 for l, _ in hs) for hs in props.values())
    # random init, the demo model and non-paper tags have no published figures
    for other in (
        FakeStore("ViT-B-32/openai", True),
        FakeStore("demo"),
        FakeStore("ViT-B-32/laion2b_s34b_b79k"),
        FakeStore("ViT-B-32:/x.safetensors"),
    ):
        assert common.paper_model(other) is None
        assert common.reference_labels(other) == {} and common.reference_properties(other) == {}


def test_paper_scores_are_the_published_counts():
    p = common.PAPER_SCORES.set_index("model")
    assert p.loc["ViT-B-32 OpenAI", "entanglement"] == pytest.approx(21 / 48)
    assert p.loc["ViT-L-14 LAION-2B", "association"] == pytest.approx(36 / 64)
    # Tables 1 and 2 print the counts' ratios truncated to three decimals
    table1 = [0.437, 0.52, 0.5, 0.541, 0.359, 0.343]
    table2 = [0.437, 0.145, 0.354, 0.166, 0.453, 0.562]
    trunc = (common.PAPER_SCORES[["entanglement", "association"]] * 1000).apply(np.floor) / 1000
    assert trunc["entanglement"].tolist() == pytest.approx(table1)
    assert trunc["association"].tolist() == pytest.approx(table2)


def test_conversion_notes():
    rgb = np.zeros((8, 8, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    assert common.conversion_notes(buf.getvalue()) == ()
    buf = io.BytesIO()
    Image.fromarray(rgb[..., 0]).save(buf, format="PNG")
    assert "converted to RGB" in common.conversion_notes(buf.getvalue())[0]
    assert common.conversion_notes(b"garbage") == ()


def test_query_crop_is_the_models_centre_crop():
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255  # the centre square is white, the sides black
    q = common.QueryImage(Image.fromarray(wide), "x", "wide")
    crop = q.crop(50)
    assert crop.shape == (50, 50, 3) and crop.min() > 200
