"""Finding the heads that carry a shortcut, and repairing worst-group accuracy by removing them
(math only: numpy, no I/O).

Three disjoint sets of images (`spurious_split`): the *fitting half* is cut in two, `means`
(the mean-ablation means) and `score` (where every choice is scored); the *held-out half* only
ever sees the final choice and its random baseline. No ranking, alignment or greedy step reads a
held-out image (tests/test_spurious.py proves it by scrambling the held-out rows).

- **Effect** (`head_effects`): each stored head mean-ablated alone; its effect is the change of
  worst-group accuracy on the score images (positive = removing it helps the worst group).
- **Alignment** (`head_alignment`): how much of a head's variance lies along the spurious texts
  rather than the core texts. For head h with centred coordinates X [image, d_head] over the
  fitting half, covariance C = XᵀX / n [d_head, d_head] and basis B [d_head, d_embed], the
  variance of its direct contribution along a unit text direction t is (Bt)ᵀ C (Bt), the
  quantity TextSpan maximises when it picks a head's texts. A text set T's share of the head is
  mean_{t ∈ T} (Bt)ᵀ C (Bt) / tr C, and alignment = share(spurious) − share(core) (in [-1, 1]).
- **Repair** (`greedy_repair`): up to K heads, each step adding the head that most raises the
  worst-group accuracy on the score images (ties: the higher balanced accuracy, the mean over
  groups), skipping heads that would lower the mean by more than `max_mean_drop`; it stops when
  no head improves (worst-group, balanced) accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.core.ablation import AblationScorer, Ablator, split
from engine.core.ablation_spec import format_ablation_spec
from engine.core.components import ComponentSet
from engine.core.groups import GroupLabels, GroupScores, score_groups
from engine.core.zeroshot import ZeroShotTask

__all__ = [
    "HeadFinding",
    "RepairStep",
    "SpuriousSplit",
    "greedy_repair",
    "head_alignment",
    "head_effects",
    "spurious_split",
]


@dataclass(frozen=True)
class SpuriousSplit:
    """Disjoint image indices (each ascending): `means` and `score` make the fitting half,
    `held_out` the other half."""

    means: np.ndarray
    score: np.ndarray
    held_out: np.ndarray

    @property
    def fitting(self) -> np.ndarray:
        return np.union1d(self.means, self.score)


def spurious_split(n_images: int, fraction: float = 0.5, seed: int = 0) -> SpuriousSplit:
    """`fraction` of the images form the fitting half (itself halved into means and score), the
    rest are held out; deterministic in `seed` (the held-out half is `ablation.split`'s eval
    half, so `ablate --seed S` evaluates on the same held-out images)."""
    fit, held = split(n_images, fraction, seed)
    if len(fit) < 2:
        raise ValueError(f"the fitting half needs at least 2 images; got {len(fit)}")
    m, s = split(len(fit), 0.5, seed + 1)  # positions within `fit`
    return SpuriousSplit(fit[m], fit[s], held)


# ---------------------------------------------------------------------------------- alignment


def head_alignment(
    components: ComponentSet,
    fit_idx: np.ndarray,
    spurious_emb: np.ndarray,
    core_emb: np.ndarray,
) -> dict[str, tuple[float, float, float]]:
    """Per stored head: (spurious share, core share, alignment = spurious − core share) of its
    direct contribution's variance over images `fit_idx`, along the unit text directions
    spurious_emb [text, d_embed] and core_emb [text, d_embed] (see the module docstring)."""
    s = _unit(spurious_emb, "spurious texts")
    c = _unit(core_emb, "core texts")
    idx = np.asarray(fit_idx, np.int64)
    out = {}
    for comp in components.heads:
        x = np.asarray(comp.coord[idx], np.float64)  # [image, d_head]
        x -= x.mean(axis=0)
        cov = x.T @ x / max(len(x), 1)  # [d_head, d_head]
        total = float(np.trace(cov))
        b = np.asarray(comp.basis, np.float64)  # [d_head, d_embed]

        def share(t: np.ndarray, b=b, cov=cov, total=total) -> float:
            p = t @ b.T  # [text, d_head]: each text direction in the head's coordinates
            v = np.einsum("td,de,te->t", p, cov, p)  # variance along each text [text]
            return float(v.mean() / total) if total > 0 else 0.0

        sp, co = share(s), share(c)
        out[comp.name] = (sp, co, sp - co)
    return out


def _unit(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{what}: need a [text, d_embed] array with at least one row")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(n == 0):
        raise ValueError(f"{what}: a text embedding has zero norm")
    return x / n


# ------------------------------------------------------------------------------------ effects


@dataclass(frozen=True)
class HeadFinding:
    """One head's effect on the score images when mean-ablated alone, and its alignment."""

    name: str
    layer: int
    head: int
    worst_after: float
    mean_after: float
    effect: float  # worst_after − worst before (positive: removing it helps the worst group)
    spurious_share: float = float("nan")
    core_share: float = float("nan")
    alignment: float = float("nan")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _scorer(output, components, task, split_: SpuriousSplit) -> AblationScorer:
    """A scorer over the score images with means over the means images (the fitting half)."""
    return AblationScorer(Ablator(output, components, split_.means, split_.score), [task])


def head_effects(
    output: np.ndarray,
    components: ComponentSet,
    task: ZeroShotTask,
    groups: GroupLabels,
    split_: SpuriousSplit,
    alignment: dict[str, tuple[float, float, float]] | None = None,
) -> tuple[GroupScores, list[HeadFinding]]:
    """(scores before, findings) on the score images; findings are sorted by effect (largest
    first; ties: the higher alignment, then canonical order). output [image, d_embed]."""
    scorer = _scorer(output, components, task, split_)
    g = {task.name: groups}
    before = score_groups(scorer, [], g)[task.name]
    rows = []
    for c in components.heads:
        s = score_groups(scorer, [c.name], g)[task.name]
        a = (alignment or {}).get(c.name, (np.nan, np.nan, np.nan))
        rows.append(
            HeadFinding(c.name, c.layer, c.head, s.worst, s.mean, s.worst - before.worst, *a)
        )
    order = sorted(
        range(len(rows)),
        key=lambda i: (-rows[i].effect, -np.nan_to_num(rows[i].alignment, nan=-np.inf), i),
    )
    return before, [rows[i] for i in order]


# ------------------------------------------------------------------------------------- repair


@dataclass(frozen=True)
class RepairStep:
    """The repair after adding `added`: the heads so far and their scores on the score images."""

    added: str
    heads: tuple[str, ...]
    worst: float
    mean: float

    @property
    def spec(self) -> str:
        return format_ablation_spec(self.heads)


def greedy_repair(
    output: np.ndarray,
    components: ComponentSet,
    task: ZeroShotTask,
    groups: GroupLabels,
    split_: SpuriousSplit,
    k: int,
    *,
    candidates: Sequence[str] | None = None,
    max_mean_drop: float | None = 0.05,
) -> list[RepairStep]:
    """Up to `k` heads chosen greedily on the score images (means from the means images): each
    step adds the candidate (default: every stored head) whose removal, with the heads chosen
    so far, gives the highest worst-group accuracy (ties: the higher balanced accuracy, then
    the earlier candidate); a candidate that lowers the mean accuracy by more than
    `max_mean_drop` below the unablated mean is skipped. Stops early when no candidate improves
    (worst-group, balanced) accuracy."""
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    scorer = _scorer(output, components, task, split_)
    g = {task.name: groups}
    base = score_groups(scorer, [], g)[task.name]
    pool = list(candidates) if candidates is not None else [c.name for c in components.heads]
    chosen: list[str] = []
    best_key = (base.worst, base.balanced)
    steps: list[RepairStep] = []
    for _ in range(k):
        best = None
        for name in pool:
            if name in chosen:
                continue
            s = score_groups(scorer, [*chosen, name], g)[task.name]
            if max_mean_drop is not None and s.mean < base.mean - max_mean_drop:
                continue
            key = (s.worst, s.balanced)
            if best is None or key > best[0]:
                best = (key, name, s)
        if best is None or best[0] <= best_key:
            break
        (best_key, name, s) = best
        chosen.append(name)
        steps.append(RepairStep(name, tuple(chosen), s.worst, s.mean))
    return steps
