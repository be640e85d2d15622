"""Offline labeller, label normalisation, answer mapping, banks."""

import subprocess
import sys
from pathlib import Path

import pytest

from engine.core.labels import MIXED, SYNONYMS, map_answer, normalise_label, offline_label
from engine.errors import UserError
from engine.sources.banks import Bank, load_bank
from engine.sources.reference import (
    paper_models,
    paper_scores,
    reference_labels,
    reference_property_heads,
)

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]


def test_offline_label_weighted_majority():
    # 2 of 5 picks, but most of the removed variance: a weighted majority
    assert offline_label(["count", "count", "bg", "shape", "bg"], [0.4, 0.3, 0.1, 0.1, 0.1]) == (
        "count"
    )
    # 3 of 5 picks but less than half the variance: no majority
    assert offline_label(["a", "b", "b", "b", "c"], [0.6, 0.1, 0.1, 0.1, 0.1]) == "a"
    assert offline_label(["a", "b", "b", "b", "c"], [0.3, 0.15, 0.15, 0.1, 0.3]) == MIXED
    # exactly half is not a majority
    assert offline_label(["a", "b"], [0.5, 0.5]) == MIXED


def test_offline_label_only_top5_distractors_and_empty():
    # picks after the 5th do not vote
    assert offline_label(["a"] * 2 + ["b"] * 3 + ["a"] * 5, [0.1] * 10) == "b"
    assert offline_label(["distractor", "distractor", "a"], [0.5, 0.3, 0.2]) == MIXED
    assert offline_label(["distractor", "a", "a"], [0.3, 0.35, 0.35]) == "a"
    assert offline_label([], []) == MIXED
    assert offline_label(["a"], [0.0]) == MIXED


def test_normalise_label_options():
    assert normalise_label("Patterns") == "pattern"
    assert normalise_label("Patterns", plurals=False) == "patterns"
    assert normalise_label("Patterns", case=False) == "Pattern"
    assert normalise_label("Glass") == "glass"  # -ss is not a plural
    assert normalise_label("Body parts") == "body part"
    assert normalise_label("  Colors. ") == "color"
    assert normalise_label("Geo-location", synonyms=SYNONYMS) == "location"
    assert normalise_label("Wildlife", synonyms=SYNONYMS) == normalise_label("Animals")
    assert normalise_label("Wildlife") == "wildlife"


@pytest.mark.parametrize(
    "answer,label,known",
    [
        ("colors", "colors", True),
        ("Color.", "colors", True),
        ('"Animals"', "animals", True),
        ("Label: Wildlife", "animals", True),
        ("Geo-location\nbecause the texts name cities", "locations", True),
        ("Typography", "letters", True),
        ("Quantum effects", "quantum effects", False),
        ("", MIXED, False),
    ],
)
def test_map_answer(answer, label, known):
    vocab = load_bank("general").vocabulary
    assert map_answer(answer, vocab) == (label, known)


def test_map_answer_synonym_outside_vocabulary_is_new_label():
    assert map_answer("wildlife", ["shape", "color"]) == ("wildlife", False)


def test_map_answer_world_vocabulary_spellings():
    vocab = ["shape", "colour", "position", "background"]
    assert map_answer("Color", vocab) == ("colour", True)
    assert map_answer("Colors", vocab) == ("colour", True)
    assert map_answer("Shapes.", vocab) == ("shape", True)


def test_general_bank_size_categories_and_reproducible(tmp_path):
    bank = load_bank("general")
    assert len(bank) >= 3000 and len(set(bank.texts)) == len(bank)
    need = {
        "colors",
        "locations",
        "animals",
        "birds",
        "nature",
        "weather",
        "texture",
        "pattern",
        "art",
        "photography",
        "objects",
        "emotion",
        "counting",
        "letters",
        "clothing",
        "subject",
    }
    assert need <= set(bank.vocabulary) and len(bank.vocabulary) >= 20
    out = tmp_path / "general.csv"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_general_bank.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    committed = (ROOT / "engine" / "data" / "banks" / "general.csv").read_bytes()
    assert out.read_bytes() == committed


def test_user_banks(tmp_path):
    txt = tmp_path / "b.txt"
    txt.write_text("a red car\n\n  a blue sky  \n", encoding="utf-8")
    assert load_bank(txt) == Bank(["a red car", "a blue sky"], ["unknown", "unknown"], "b.txt")
    assert load_bank(txt).vocabulary == []
    csvf = tmp_path / "b.csv"
    csvf.write_text('Text,Category\n"a car, red",Vehicles\na dog,\n', encoding="utf-8")
    b = load_bank(csvf)
    assert b.texts == ["a car, red", "a dog"] and b.categories == ["vehicles", "unknown"]
    bad = tmp_path / "bad.csv"
    bad.write_text("caption,category\nx,y\n", encoding="utf-8")
    with pytest.raises(UserError, match="'text' column"):
        load_bank(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="no descriptions"):
        load_bank(empty)
    with pytest.raises(UserError, match="not 'general'"):
        load_bank(tmp_path / "missing.txt")


def test_reference_data_is_one_consistent_set():
    """The six models of the score table are exactly the ones with published labels, each with
    one label per head of its last four layers, and their property heads are labelled heads."""
    models = paper_models()
    assert [m.name for m in models] == list(paper_scores()["model"])
    assert len({m.spec for m in models}) == 6
    for m in models:
        lab = reference_labels(m.arch, m.pretrained)
        assert len(lab) == m.heads and lab.duplicated(["layer", "head"]).sum() == 0
        n_layers = {48: 12, 64: 24}[m.heads]
        assert sorted(lab.layer.unique()) == list(range(n_layers - 4, n_layers))
        props = reference_property_heads(m.arch, m.pretrained)
        heads = set(zip(lab["layer"], lab["head"], strict=True))
        assert props is not None and set(zip(props["layer"], props["head"], strict=True)) <= heads
    p = paper_scores().set_index("model")
    assert p.loc["ViT-B-32 OpenAI", "entanglement"] == 21 / 48
    assert p.loc["ViT-L-14 LAION-2B", "association"] == 36 / 64


def test_reference_labels_shipped():
    df = reference_labels("ViT-B-32", "openai")
    assert list(df.columns) == ["layer", "head", "label"] and len(df) == 48
    assert sorted(df.layer.unique()) == [8, 9, 10, 11]
    assert len(reference_labels("ViT-L-14", "laion2b_s32b_b82k")) == 64
    assert reference_labels("ViT-B-32", "nonexistent") is None
