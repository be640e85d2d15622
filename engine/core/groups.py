"""Group accuracies of a zero-shot task, before and after an ablation (math only: numpy, no I/O).

A *grouped* task gives each image a class and a group (Waterbirds: class = bird type, group =
(bird type, place); the demo world's planted shortcut: class = shape, group = (shape,
background)). A shortcut shows as a gap between the mean accuracy and the *worst-group*
accuracy, the lowest accuracy of any group with images (Sagawa et al. 2020):

    acc_g = #{i in g : pred_i = y_i} / #{i in g}          worst = min_g acc_g

`mean` is the accuracy over every grouped image (the test distribution's own weighting, as
Waterbirds papers report "average accuracy"); `balanced` is the unweighted mean over groups.
Images with label or group -1 are not scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from engine.core.ablation import AblationScorer, Ablator
from engine.core.components import ComponentSet
from engine.core.zeroshot import UNLABELLED, ZeroShotTask

__all__ = [
    "GroupAblation",
    "GroupLabels",
    "GroupScores",
    "group_ablation",
    "group_scores",
    "score_groups",
]


@dataclass(frozen=True)
class GroupLabels:
    """A task's groups: groups [image] int (-1 outside every group), their names."""

    groups: np.ndarray
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        g = np.asarray(self.groups)
        if g.ndim != 1 or not np.issubdtype(g.dtype, np.integer):
            raise ValueError("groups must be a 1-d integer array [image]")
        if g.size and (g.min() < UNLABELLED or g.max() >= len(self.names)):
            raise ValueError(f"group indices must lie in -1..{len(self.names) - 1}")
        object.__setattr__(self, "groups", g.astype(np.int64))
        object.__setattr__(self, "names", tuple(self.names))

    def subset(self, idx: np.ndarray) -> GroupLabels:
        return GroupLabels(self.groups[idx], self.names)


@dataclass(frozen=True)
class GroupScores:
    """Accuracy per group: accuracy [group] (NaN for a group without images), count [group];
    `mean` over every scored image; `worst` and `worst_group` over groups with images."""

    names: tuple[str, ...]
    accuracy: np.ndarray
    count: np.ndarray
    mean: float

    @property
    def present(self) -> np.ndarray:
        return self.count > 0

    @property
    def worst(self) -> float:
        return float(np.nanmin(self.accuracy)) if self.present.any() else math.nan

    @property
    def worst_group(self) -> str:
        return self.names[int(np.nanargmin(self.accuracy))] if self.present.any() else ""

    @property
    def balanced(self) -> float:
        return float(np.nanmean(self.accuracy)) if self.present.any() else math.nan

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "worst": self.worst,
            "worst_group": self.worst_group,
            "balanced": self.balanced,
            "groups": [
                {"group": n, "count": int(c), "accuracy": None if c == 0 else float(a)}
                for n, c, a in zip(self.names, self.count, self.accuracy, strict=True)
            ],
        }


def group_scores(predictions: np.ndarray, labels: np.ndarray, groups: GroupLabels) -> GroupScores:
    """Per-group accuracy of predictions [image] against labels [image] (rows align with
    groups.groups [image]); images with label or group -1 are left out."""
    pred = np.asarray(predictions, np.int64)
    y = np.asarray(labels, np.int64)
    g = groups.groups
    if not pred.shape == y.shape == g.shape:
        raise ValueError(f"predictions {pred.shape}, labels {y.shape}, groups {g.shape} differ")
    keep = (y != UNLABELLED) & (g != UNLABELLED)
    ok = (pred == y)[keep]
    n_groups = len(groups.names)
    count = np.bincount(g[keep], minlength=n_groups)
    correct = np.bincount(g[keep], weights=ok, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
    mean = float(ok.mean()) if ok.size else math.nan
    return GroupScores(groups.names, acc, count, mean)


def score_groups(
    scorer: AblationScorer, names: Sequence[str], groups: Mapping[str, GroupLabels]
) -> dict[str, GroupScores]:
    """Group scores of each grouped task of `scorer` with `names` mean-ablated; `groups` maps
    task names to their groups over all images [image] (the scorer's eval rows are taken)."""
    idx = scorer.ablator.eval_idx
    out = {}
    for task, res in zip(scorer.tasks, scorer.score(names), strict=True):
        if task.name in groups:
            out[task.name] = group_scores(
                res.predictions, task.labels, groups[task.name].subset(idx)
            )
    return out


@dataclass(frozen=True)
class GroupAblation:
    """One grouped task before and after an ablation, and after each random draw."""

    task: str
    before: GroupScores
    after: GroupScores
    random: tuple[GroupScores, ...]

    @property
    def random_worst(self) -> np.ndarray:
        """Worst-group accuracy after each random draw [draw]."""
        return np.array([r.worst for r in self.random], np.float64)

    @property
    def random_mean(self) -> np.ndarray:
        """Mean accuracy after each random draw [draw]."""
        return np.array([r.mean for r in self.random], np.float64)

    def to_dict(self) -> dict:
        rw = self.random_worst
        rm = self.random_mean

        def avg(a: np.ndarray) -> float | None:
            return float(a.mean()) if a.size else None

        return {
            "task": self.task,
            "worst_before": self.before.worst,
            "worst_after": self.after.worst,
            "mean_before": self.before.mean,
            "mean_after": self.after.mean,
            "random_worst": [float(x) for x in rw],
            "random_worst_mean": avg(rw),
            "random_mean_mean": avg(rm),
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "random_group_mean": (
                [float(x) for x in np.nanmean([r.accuracy for r in self.random], axis=0)]
                if self.random
                else []
            ),
        }


def group_ablation(
    output: np.ndarray,
    components: ComponentSet,
    ablated: Sequence[str],
    random_draws: Sequence[Sequence[str]],
    tasks: Sequence[ZeroShotTask],
    groups: Mapping[str, GroupLabels],
    fit_idx: np.ndarray,
    eval_idx: np.ndarray,
) -> dict[str, GroupAblation]:
    """Group accuracies of the grouped tasks before/after mean-ablating `ablated` and after
    each random draw, over the (fit, eval) split; output [image, d_embed]."""
    grouped = [t for t in tasks if t.name in groups]
    if not grouped:
        return {}
    scorer = AblationScorer(Ablator(output, components, fit_idx, eval_idx), grouped)
    before = score_groups(scorer, [], groups)
    after = score_groups(scorer, ablated, groups)
    rand = [score_groups(scorer, d, groups) for d in random_draws]
    return {t: GroupAblation(t, before[t], after[t], tuple(r[t] for r in rand)) for t in before}
