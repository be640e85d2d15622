"""Zero-shot classification on image embeddings (math only: numpy, no I/O, no model).

A task is a set of classes, each described by a prompt ensemble: every prompt's text embedding is
normalised, the class embedding is their mean, renormalised (`class_embeddings`). An image is
assigned the class whose embedding has the largest dot product with the image embedding. The
image embedding's own norm is a positive per-image factor, so cosine and dot product give the same
prediction; `evaluate` normalises anyway (rows of zero norm stay zero and predict class 0).

Labels are integers into the task's classes; -1 marks an image that is unknown or excluded from
the task (it is predicted but not scored).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

UNLABELLED = -1


def _unit_rows(x: np.ndarray, what: str) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0) or not np.all(np.isfinite(norms)):
        raise ValueError(f"{what}: every row needs a finite, non-zero norm")
    return x / norms


def class_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """Per class, its prompts: `template.format(name)` for every template (templates use `{}`)."""
    if not class_names or not templates:
        raise ValueError("need at least one class name and one template")
    return [[t.format(name) for t in templates] for name in class_names]


def class_embeddings(
    text_emb: np.ndarray | Callable[[list[str]], np.ndarray],
    n_classes: int | None = None,
    *,
    prompts: Sequence[Sequence[str]] | None = None,
) -> np.ndarray:
    """Prompt-ensemble class embeddings [class, d_embed] (float32, unit rows).

    Either `text_emb` is an array [class*template, d_embed] in class-major order (row
    c*template + t is class c's prompt t) and `n_classes` says how many classes; or `text_emb`
    is a callable encoding a list of texts to [text, d_embed] and `prompts` gives each class its
    prompts (the classes may have different numbers of prompts; the callable is called once).
    Each prompt embedding is normalised, averaged over the class's prompts, and renormalised.
    """
    if callable(text_emb):
        if prompts is None:
            raise ValueError("class_embeddings(encode, prompts=[[...], ...]) needs the prompts")
        counts = np.array([len(p) for p in prompts], dtype=np.int64)
        if len(counts) == 0 or np.any(counts == 0):
            raise ValueError("every class needs at least one prompt")
        flat = [s for p in prompts for s in p]
        emb = np.asarray(text_emb(flat), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(flat):
            raise ValueError(f"encoder returned {emb.shape} for {len(flat)} texts")
        emb = _unit_rows(emb, "text embeddings")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        means = np.add.reduceat(emb, starts, axis=0) / counts[:, None]
    else:
        emb = np.asarray(text_emb, dtype=np.float32)
        if emb.ndim != 2:
            raise ValueError(f"text_emb must be [class*template, d_embed]; got {emb.shape}")
        if n_classes is None or n_classes < 1 or emb.shape[0] % n_classes or emb.shape[0] == 0:
            raise ValueError(
                f"{emb.shape[0]} text rows do not split into n_classes={n_classes} equal groups"
            )
        emb = _unit_rows(emb, "text embeddings")
        means = emb.reshape(n_classes, -1, emb.shape[1]).mean(axis=1)
    return _unit_rows(means, "class embeddings (prompts cancel out)").astype(np.float32)


@dataclass(frozen=True)
class ZeroShotTask:
    """One classification task over a collection of images.

    labels [image] int: class index, or -1 for an image outside the task. class_emb
    [class, d_embed]: rows are normalised on construction (a copy; float32).
    """

    name: str
    class_names: tuple[str, ...]
    labels: np.ndarray
    class_emb: np.ndarray

    def __post_init__(self) -> None:
        names = tuple(self.class_names)
        labels = np.asarray(self.labels)
        emb = np.asarray(self.class_emb, dtype=np.float32)
        if len(names) == 0:
            raise ValueError(f"task {self.name!r} has no classes")
        if emb.ndim != 2 or emb.shape[0] != len(names):
            raise ValueError(
                f"task {self.name!r}: class_emb {emb.shape} does not match {len(names)} classes"
            )
        if labels.ndim == 1 and labels.size == 0:
            labels = labels.astype(np.int64)  # an empty list of any dtype
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"task {self.name!r}: labels must be a 1-d integer array [image]")
        if labels.size and (labels.min() < UNLABELLED or labels.max() >= len(names)):
            raise ValueError(
                f"task {self.name!r}: labels must lie in -1..{len(names) - 1}; "
                f"got {labels.min()}..{labels.max()}"
            )
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "class_emb", _unit_rows(emb, f"task {self.name!r} class_emb"))

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def labelled(self) -> np.ndarray:
        """[image] bool: images that belong to the task."""
        return self.labels != UNLABELLED

    def subset(self, idx: np.ndarray) -> ZeroShotTask:
        """The same task restricted to images `idx` (labels re-indexed to the subset)."""
        return ZeroShotTask(self.name, self.class_names, self.labels[idx], self.class_emb)


@dataclass(frozen=True)
class TaskResult:
    """Zero-shot scores of one task.

    accuracy: share of labelled images predicted correctly; n_labelled, n_correct: counts;
    per_class_accuracy [class] (NaN for a class without images); per_class_count [class];
    predictions [image] int (every image, labelled or not).
    """

    name: str
    class_names: tuple[str, ...]
    accuracy: float
    n_labelled: int
    n_correct: int
    per_class_accuracy: np.ndarray
    per_class_count: np.ndarray
    predictions: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        """JSON-ready summary (no predictions)."""
        return {
            "task": self.name,
            "accuracy": self.accuracy,
            "n_labelled": self.n_labelled,
            "n_correct": self.n_correct,
            "per_class": [
                {"class": c, "accuracy": None if np.isnan(a) else float(a), "count": int(n)}
                for c, a, n in zip(
                    self.class_names, self.per_class_accuracy, self.per_class_count, strict=True
                )
            ],
        }


def score_predictions(predictions: np.ndarray, task: ZeroShotTask) -> TaskResult:
    """Score predicted classes [image] against the task's labels [image]."""
    predictions = np.asarray(predictions, dtype=np.int64)
    if predictions.shape != task.labels.shape:
        raise ValueError(
            f"task {task.name!r}: {predictions.shape[0]} predictions for {task.labels.shape[0]} labels"
        )
    mask = task.labelled
    n = int(mask.sum())
    if n == 0:
        raise ValueError(f"task {task.name!r} has no labelled images to evaluate")
    y = task.labels[mask]
    ok = predictions[mask] == y
    count = np.bincount(y, minlength=task.n_classes)
    correct = np.bincount(y, weights=ok, minlength=task.n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
    n_correct = int(ok.sum())
    return TaskResult(
        task.name, task.class_names, n_correct / n, n, n_correct, per_class, count, predictions
    )


def predict(embeddings: np.ndarray, class_emb: np.ndarray) -> np.ndarray:
    """Predicted class [image] for embeddings [image, d_embed] against class_emb [class, d_embed]."""
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != class_emb.shape[1]:
        raise ValueError(f"embeddings must be [image, {class_emb.shape[1]}]; got {tuple(x.shape)}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    return (x @ class_emb.T).argmax(axis=1)


def evaluate(embeddings: np.ndarray, task: ZeroShotTask) -> TaskResult:
    """Zero-shot accuracy of `task` on embeddings [image, d_embed] (rows match task.labels)."""
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] != task.labels.shape[0]:
        raise ValueError(
            f"task {task.name!r}: embeddings {tuple(x.shape)} do not match "
            f"{task.labels.shape[0]} labels"
        )
    if not task.labelled.any():
        raise ValueError(f"task {task.name!r} has no labelled images to evaluate")
    return score_predictions(predict(x, task.class_emb), task)
