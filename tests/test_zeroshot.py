"""Zero-shot evaluation: prompt ensembles, accuracy per task and class (engine.core.zeroshot)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.zeroshot import (
    ZeroShotTask,
    class_embeddings,
    class_prompts,
    evaluate,
    score_predictions,
)

pytestmark = pytest.mark.unit


def test_prompt_ensemble_normalises_each_prompt_then_the_mean():
    # class 0: prompts (2, 0) and (0, 1) -> units (1, 0), (0, 1) -> mean (.5, .5) -> (1, 1)/√2
    # class 1: one prompt (0, -3) -> (0, -1)
    emb = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, -3.0], [0.0, -3.0]])
    got = class_embeddings(emb, 2)
    assert np.allclose(got, [[2**-0.5, 2**-0.5], [0.0, -1.0]])
    assert got.dtype == np.float32


def test_callable_and_ragged_prompts():
    table = {"a cat": [1.0, 0.0], "a kitten": [0.0, 5.0], "a dog": [0.0, -1.0]}
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.array([table[t] for t in texts])

    got = class_embeddings(encode, prompts=[["a cat", "a kitten"], ["a dog"]])
    assert np.allclose(got, [[2**-0.5, 2**-0.5], [0.0, -1.0]])
    assert calls == [["a cat", "a kitten", "a dog"]]  # one call
    assert class_prompts(["cat", "dog"], ["a {}", "the {}."]) == [
        ["a cat", "the cat."],
        ["a dog", "the dog."],
    ]


@settings(max_examples=30, deadline=None)
@given(n_classes=st.integers(1, 6), n_templates=st.integers(1, 4), seed=st.integers(0, 999))
def test_array_and_callable_forms_agree(n_classes, n_templates, seed):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n_classes * n_templates, 8))
    prompts = [[f"{c}-{t}" for t in range(n_templates)] for c in range(n_classes)]
    index = {p: i for i, p in enumerate(s for ps in prompts for s in ps)}
    a = class_embeddings(emb, n_classes)
    b = class_embeddings(lambda texts: emb[[index[t] for t in texts]], prompts=prompts)
    assert np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)


def test_class_embedding_errors():
    with pytest.raises(ValueError):
        class_embeddings(np.ones((5, 3)), 2)  # 5 rows do not split into 2 classes
    with pytest.raises(ValueError):
        class_embeddings(np.ones((4, 3)))  # n_classes missing
    with pytest.raises(ValueError):
        class_embeddings(lambda t: np.ones((len(t), 3)), prompts=[["x"], []])
    with pytest.raises(ValueError, match="non-zero"):
        class_embeddings(np.array([[1.0, 0.0], [-1.0, 0.0]]), 1)  # prompts cancel out


def task3(labels):
    return ZeroShotTask("t", ("x", "y", "z"), np.array(labels), np.eye(3, 4))


def test_evaluate_accuracy_per_class_and_unlabelled():
    emb = np.array(
        [[5, 0, 0, 1], [0, 2, 0, 0], [0, 1, 0.5, 0], [0, 0, 3, 0], [9, 0, 0, 0], [0, 0, 1, 0]]
    )
    # predictions: x, y, y, z, x, z
    res = evaluate(emb, task3([0, 1, 2, 2, -1, -1]))
    assert list(res.predictions) == [0, 1, 1, 2, 0, 2]
    assert res.n_labelled == 4 and res.n_correct == 3 and res.accuracy == 0.75
    assert list(res.per_class_count) == [1, 1, 2]
    assert np.allclose(res.per_class_accuracy, [1.0, 1.0, 0.5])
    d = res.to_dict()
    assert d["per_class"][2] == {"class": "z", "accuracy": 0.5, "count": 2}


def test_class_without_images_is_nan_and_norm_does_not_matter():
    emb = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    res = evaluate(emb, task3([0, 1]))
    assert np.isnan(res.per_class_accuracy[2]) and res.accuracy == 1.0
    assert evaluate(emb * np.array([[100.0], [0.01]]), task3([0, 1])).accuracy == 1.0
    assert res.to_dict()["per_class"][2]["accuracy"] is None


def test_empty_and_bad_tasks_raise_clear_errors():
    with pytest.raises(ValueError, match="no labelled images"):
        evaluate(np.ones((2, 4)), task3([-1, -1]))
    with pytest.raises(ValueError, match="no labelled images"):
        evaluate(np.ones((0, 4)), task3([]))
    with pytest.raises(ValueError, match="no classes"):
        ZeroShotTask("e", (), np.zeros(0, int), np.zeros((0, 4)))
    with pytest.raises(ValueError, match="-1..2"):
        task3([0, 3])
    with pytest.raises(ValueError, match="do not match"):
        evaluate(np.ones((3, 4)), task3([0, 1]))
    with pytest.raises(ValueError, match="embeddings must be"):
        evaluate(np.ones((2, 5)), task3([0, 1]))
    with pytest.raises(ValueError, match="predictions"):
        score_predictions(np.zeros(3, int), task3([0, 1]))


def test_subset_keeps_classes():
    t = task3([0, 1, 2, -1])
    s = t.subset(np.array([2, 3]))
    assert list(s.labels) == [2, -1] and s.class_names == t.class_names
