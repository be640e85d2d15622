"""dashboard/charts.py: `mixed` drawn neutral, zero scores drawn as values, missing as no data."""

from __future__ import annotations

import pandas as pd
import pytest

from dashboard import charts

pytestmark = pytest.mark.unit


def test_mixed_and_unlabelled_are_neutral_greys_and_properties_are_not():
    scale = charts.label_scale(["colour", "mixed", "shape", "(unlabelled)", "colour"]).to_dict()
    colours = dict(zip(scale["domain"], scale["range"], strict=True))
    assert colours["mixed"] == charts.NEUTRAL["mixed"] and colours["(unlabelled)"] == "#f2f2f2"
    for grey in (colours["mixed"], colours["(unlabelled)"]):  # r = g = b
        assert grey[1:3] == grey[3:5] == grey[5:7]
    assert colours["colour"] != colours["shape"]
    for c in (colours["colour"], colours["shape"]):
        assert not c[1:3] == c[3:5] == c[5:7]  # a real category colour, never grey
    # not red: the first category colour of a store whose only labels are mixed is not drawn
    assert charts.label_scale(["mixed"]).to_dict()["range"] == [charts.NEUTRAL["mixed"]]


def test_zero_is_a_value_and_a_missing_layer_says_no_data():
    per_layer = pd.DataFrame(
        {"metric": ["association", "association", "entanglement_unique"],
         "layer_from": [4, 5, 4], "value": [0.0, 0.25, 0.5], "count": [0, 4, 8],
         "total": [16, 16, 16]}
    )  # fmt: skip
    df = charts.with_missing(per_layer, [4, 5, 6], ["association", "entanglement_unique"])
    text = {(r.layer_from, r.metric): r.text for r in df.itertuples()}
    assert text[(4, "association")] == "0.00"  # zero: a value
    assert text[(5, "association")] == "0.25"
    assert text[(5, "entanglement_unique")] == "no data"  # nothing stored
    assert text[(6, "association")] == "no data"
    spec = charts.per_layer_chart(per_layer, [4, 5, 6]).to_dict()
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks == ["bar", "text"]  # every bar carries its value
