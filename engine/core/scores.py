"""Entanglement and association scores over a set of heads (math only).

Every score is a count over heads: `Score(count, total)`, value = count / total.

- `association`: heads with at least 3 of their top-5 TextSpan texts whose category matches the
  head's label (the paper's Table 2 definition).
- `entanglement_shared`: heads whose label is shared with at least one other head (the paper's
  wording: "the mean frequency at which heads exhibit the same label"; 0 when every head has its
  own property).
- `entanglement_unique`: heads whose label no other head has. This variant, not the wording,
  reproduces the paper's Table 1 from the demo's published labels (docs/interpretation.md).

Heads labelled `mixed` count in the total but are neither shared nor unique nor associated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.core.labels import MIXED, normalise_label

METRICS = ("association", "entanglement_shared", "entanglement_unique")


@dataclass(frozen=True)
class Score:
    count: int
    total: int

    @property
    def value(self) -> float:
        return self.count / self.total if self.total else float("nan")


Normaliser = Callable[[str], str]


def _norm(labels: Sequence[str], normalise: Normaliser | None) -> list[str]:
    f = normalise or normalise_label
    return [f(x) for x in labels]


def entanglement_shared(labels: Sequence[str], normalise: Normaliser | None = None) -> Score:
    """Heads whose (normalised) label at least one other head also has. labels: [head]."""
    norm = _norm(labels, normalise)
    counts = Counter(norm)
    mixed = (normalise or normalise_label)(MIXED)
    return Score(sum(1 for x in norm if x != mixed and counts[x] >= 2), len(norm))


def entanglement_unique(labels: Sequence[str], normalise: Normaliser | None = None) -> Score:
    """Heads whose (normalised) label no other head has. labels: [head]."""
    norm = _norm(labels, normalise)
    counts = Counter(norm)
    mixed = (normalise or normalise_label)(MIXED)
    return Score(sum(1 for x in norm if x != mixed and counts[x] == 1), len(norm))


def association(
    labels: Sequence[str],
    top_categories: Sequence[Sequence[str]],
    *,
    top_k: int = 5,
    min_match: int = 3,
    normalise: Normaliser | None = None,
) -> Score:
    """Heads with >= min_match of their top_k texts' categories equal to the head's label.

    labels: [head]; top_categories: [head][pick] bank categories of the picked texts, best first.
    """
    if len(labels) != len(top_categories):
        raise ValueError("labels and top_categories must have one entry per head")
    f = normalise or normalise_label
    count = 0
    for label, cats in zip(labels, top_categories, strict=True):
        lab = f(label)
        if lab == f(MIXED):
            continue
        if sum(1 for c in list(cats)[:top_k] if f(c) == lab) >= min_match:
            count += 1
    return Score(count, len(labels))


@dataclass(frozen=True)
class ScoreRow:
    metric: str
    scope: str  # "range" (a layer range, by default the last four layers) or "layer"
    layer_from: int
    layer_to: int
    count: int
    total: int
    value: float


def score_rows(
    layers: Sequence[int],
    labels: Sequence[str],
    top_categories: Sequence[Sequence[str]] | None = None,
    *,
    ranges: Sequence[tuple[int, int]] | None = None,
    normalise: Normaliser | None = None,
) -> list[ScoreRow]:
    """All scores per layer and per layer range (default: the last four layers present).

    layers: [head] the layer of each head; labels: [head]; top_categories: [head][pick] or None
    (then association is skipped, e.g. for published labels without their texts).
    """
    if not layers:
        return []
    present = sorted(set(layers))
    if ranges is None:
        last = present[-4:]
        ranges = [(last[0], last[-1])]
    rows: list[ScoreRow] = []
    groups = [("range", lo, hi) for lo, hi in ranges] + [("layer", lay, lay) for lay in present]
    for scope, lo, hi in groups:
        sel = [i for i, lay in enumerate(layers) if lo <= lay <= hi]
        if not sel:
            continue
        lab = [labels[i] for i in sel]
        scores = {
            "entanglement_shared": entanglement_shared(lab, normalise),
            "entanglement_unique": entanglement_unique(lab, normalise),
        }
        if top_categories is not None:
            cats = [top_categories[i] for i in sel]
            scores["association"] = association(lab, cats, normalise=normalise)
        for metric in METRICS:
            if metric in scores:
                s = scores[metric]
                rows.append(ScoreRow(metric, scope, lo, hi, s.count, s.total, s.value))
    return rows
