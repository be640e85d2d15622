"""Scores (known answers, the paper's Table 1 from the published labels) and ground-truth η²."""

import numpy as np
import pytest

from engine.core.groundtruth import dominant_factor, eta2, head_eta2, label_matches
from engine.core.labels import NORMALISATIONS
from engine.core.scores import (
    association,
    entanglement_shared,
    entanglement_unique,
    score_rows,
)
from engine.sources.reference import reference_labels

pytestmark = pytest.mark.unit


def test_entanglement_known_answers():
    labels = ["Colors", "colors", "Animal", "Animals", "texture", "mixed", "mixed"]
    # default normalisation folds case and plurals: colors x2, animal x2 shared; texture unique
    assert entanglement_shared(labels).count == 4
    assert entanglement_unique(labels).count == 1
    assert entanglement_unique(labels).total == 7
    # without normalisation every spelling is its own label; mixed never counts
    none = NORMALISATIONS["none"]
    assert entanglement_shared(labels, none).count == 0
    assert entanglement_unique(labels, none).count == 5
    assert entanglement_shared(["a", "b", "c"]).value == 0.0  # every head its own property


def test_association_known_answers():
    labels = ["colors", "animals", "mixed", "texture"]
    cats = [
        ["colors", "colors", "pattern", "colors", "x", "colors"],  # 3 of top-5 -> associated
        ["animals", "birds", "animals", "x", "y", "animals"],  # 2 of top-5 (6th ignored) -> not
        ["mixed", "mixed", "mixed"],  # mixed heads never associate
        ["Textures", "texture", "texture"],  # folded plural/case -> 3
    ]
    s = association(labels, cats)
    assert (s.count, s.total) == (2, 4)
    with pytest.raises(ValueError):
        association(["a"], [])


def test_score_rows_ranges_and_layers():
    layers = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    labels = ["a", "a", "b", "c", "d", "d", "e", "f", "g", "h"]
    cats = [[lab] * 5 for lab in labels]
    rows = score_rows(layers, labels, cats)
    rng = [r for r in rows if r.scope == "range"]
    assert {(r.layer_from, r.layer_to) for r in rng} == {(1, 4)}  # last four layers present
    by = {(r.metric, r.scope, r.layer_from): r for r in rows}
    assert by[("entanglement_shared", "range", 1)].count == 2  # the two "d" heads
    assert by[("entanglement_unique", "range", 1)].count == 6
    assert by[("association", "range", 1)].count == 8
    assert by[("entanglement_shared", "layer", 0)].count == 2
    assert by[("entanglement_unique", "layer", 1)].value == 1.0
    no_assoc = score_rows(layers, labels, None, ranges=[(0, 4)])
    assert {r.metric for r in no_assoc} == {"entanglement_shared", "entanglement_unique"}
    assert [r.total for r in no_assoc if r.scope == "range"] == [10, 10]


# The paper's Table 1 (entanglement, counts of heads) and the unique-label counts from the
# published labels with case and plurals folded (engine/data/reference/README.md).
PAPER = {
    ("ViT-B-32", "openai"): (21, 21),
    ("ViT-B-32", "datacomp_m_s128m_b4k"): (25, 25),
    ("ViT-B-16", "openai"): (24, 26),
    ("ViT-B-16", "laion2b_s34b_b88k"): (26, 26),
    ("ViT-L-14", "openai"): (23, 25),
    ("ViT-L-14", "laion2b_s32b_b82k"): (22, 23),
}


@pytest.mark.parametrize("model", list(PAPER))
def test_published_labels_reproduce_table1_as_unique(model):
    labels = reference_labels(*model).label.tolist()
    paper, unique = PAPER[model]
    s = entanglement_unique(labels, NORMALISATIONS["case+plurals"])
    assert s.count == unique and s.total in (48, 64)
    assert abs(s.count - paper) <= 2
    shared = entanglement_shared(labels, NORMALISATIONS["case+plurals"])
    assert shared.count == s.total - s.count  # no head is "mixed" in the published labels


def test_eta2_known_answers():
    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(4), 50)  # [image]
    means = rng.normal(size=(4, 8)) * 3
    pure = means[codes]  # [image, d_embed]: only the factor
    assert eta2(pure, codes) == pytest.approx(1.0)
    noise = rng.normal(size=pure.shape)
    assert eta2(noise, codes) < 0.1
    mix = pure + noise
    # η² = between / total, computed independently via the grand and group means
    gm = mix.mean(0)
    between = sum(50 * ((mix[codes == g].mean(0) - gm) ** 2).sum() for g in range(4))
    assert eta2(mix, codes) == pytest.approx(between / ((mix - gm) ** 2).sum())
    # undefined codes (-1) are skipped
    codes2 = codes.copy()
    codes2[:10] = -1
    assert eta2(pure, codes2) == pytest.approx(1.0)
    assert eta2(np.zeros((10, 3)), np.arange(10) % 2) == 0.0


def test_head_eta2_and_dominant_factor():
    rng = np.random.default_rng(1)
    codes = np.stack([rng.integers(0, 3, 300), rng.integers(0, 5, 300)], axis=1)  # [image, factor]
    c = rng.normal(size=(5, 16))[codes[:, 1]] + 0.1 * rng.normal(size=(300, 16))
    e = head_eta2(c, codes)
    assert e.shape == (2,) and e[1] > 0.9 > 0.1 > e[0]
    truth = dominant_factor(e, ["shape", "colour"])
    assert truth.factor == "colour" and truth.is_dominant
    assert not dominant_factor(np.array([0.3, 0.2]), ["a", "b"]).is_dominant
    assert label_matches("Colour", "colour") and not label_matches("mixed", "colour")


def test_docs_table_is_computed_from_shipped_labels():
    from pathlib import Path

    from engine.pipeline.interpret import reference_markdown_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "interpretation.md").read_text()
    table = reference_markdown_table()
    assert table in doc
    # the README's counts, with case and plurals folded: unique = paper for three models
    assert "| ViT-B-32 openai | 48 | 21 | 21 / 27 | 21 / 27 | 21 / 27 |" in table
    assert "| ViT-B-32 datacomp_m_s128m_b4k | 48 | 25 | 28 / 20 | 28 / 20 | 25 / 23 |" in table
    assert "| ViT-B-16 laion2b_s34b_b88k | 48 | 26 | 29 / 19 | 29 / 19 | 26 / 22 |" in table


def test_scores_command_published_rows():
    from engine.cli.scores import _reference

    rows = {(r["metric"], r["scope"], r["layer_from"]): r for r in _reference("ViT-B-32/openai")}
    assert rows[("entanglement_unique", "range", 8)]["count"] == 21
    assert rows[("entanglement_unique", "range", 8)]["total"] == 48
    assert ("association", "range", 8) not in rows  # published labels come without their texts
    assert _reference("demo") == [] and _reference("ViT-B-32/laion400m_e31") == []
    syn = {
        (r["metric"], r["scope"]): r for r in _reference("ViT-B-32/openai", "case+plurals+synonyms")
    }
    assert syn[("entanglement_unique", "range")]["count"] == 9  # the docs table's value
