"""Groups and shortcut heads over a store session: what the Ablation page's group panel shows
(the math is `engine.core.groups` and `engine.core.spurious`; `python -m engine spurious` runs the
same search and records it, `engine.pipeline.spurious`).

    g = grouped_task(s)                                   # the world's shape-by-background task
    group_ablation(s, g, names, draws=10, split=0.5, seed=0)    -> core.groups.GroupAblation
    find_spurious(s, g, k=4, split=0.5, seed=0)                 -> Finding
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.core import ablation, spurious
from engine.core.groups import GroupAblation, GroupLabels
from engine.core.groups import group_ablation as _group_ablation
from engine.core.zeroshot import ZeroShotTask
from engine.errors import UserError
from engine.sources import world


@dataclass(frozen=True)
class GroupedTask:
    """A store's grouped zero-shot task: the task (class embeddings included) and its groups."""

    source: str
    task: ZeroShotTask
    groups: GroupLabels


def grouped_task(s, source: str | None = None) -> GroupedTask | None:
    """The store's grouped task (default: `groups`, the demo world's planted-shortcut task, on a
    world store); None when the store has none."""
    if source is None and s.reader.factors() is None:
        return None
    try:
        ts = s.zeroshot_tasks(source or "groups")
    except UserError:
        return None
    for spec, task in zip(ts.specs, ts.tasks, strict=True):
        if spec.groups is not None:
            return GroupedTask(ts.source, task, GroupLabels(spec.groups, tuple(spec.group_names)))
    return None


def group_ablation(
    s, g: GroupedTask, names, *, draws: int = 10, split: float = 0.5, seed: int = 0
) -> GroupAblation:
    """Group accuracies before/after mean-ablating `names` (and `draws` random-head draws) over
    `ablation.split(n, split, seed)`: the split `ablate` uses."""
    output, comps = s.components()
    fit, ev = ablation.split(len(output), split, seed)
    rand = ablation.random_baseline(comps, list(names), draws=draws, seed=seed)
    res = _group_ablation(output, comps, list(names), rand, [g.task], {g.task.name: g.groups},
                          fit, ev)  # fmt: skip
    return res[g.task.name]


@dataclass(frozen=True)
class Finding:
    """The finder's ranking, the greedy repair and its held-out check (None without a repair)."""

    findings: list[spurious.HeadFinding]
    steps: list[spurious.RepairStep]
    held_out: GroupAblation | None

    @property
    def spec(self) -> str:
        return self.steps[-1].spec if self.steps else "none"


def find_spurious(
    s,
    g: GroupedTask,
    *,
    k: int = 4,
    split: float = 0.5,
    seed: int = 0,
    draws: int = 10,
    spurious_texts: list[str] | None = None,
    core_texts: list[str] | None = None,
) -> Finding:
    """Rank heads and repair on the fitting half, check on the held-out half (as the command).
    Texts default to the world's background and shape prompts on a world task."""
    output, comps = s.components()
    sp_split = spurious.spurious_split(len(output), split, seed)
    if spurious_texts is None and g.source == "groups":
        spurious_texts = [t for ts in world.value_texts(world.BIAS.spurious) for t in ts]
        core_texts = [t for ts in world.value_texts(world.BIAS.core) for t in ts]
    align = None
    if spurious_texts and core_texts:
        align = spurious.head_alignment(
            comps, sp_split.fitting, s.text_embeddings(spurious_texts),
            s.text_embeddings(core_texts),
        )  # fmt: skip
    _, findings = spurious.head_effects(output, comps, g.task, g.groups, sp_split, align)
    steps = spurious.greedy_repair(output, comps, g.task, g.groups, sp_split, k)
    held = None
    if steps:
        chosen = list(steps[-1].heads)
        rand = ablation.random_baseline(comps, chosen, draws=draws, seed=seed)
        held = _group_ablation(
            output, comps, chosen, rand, [g.task], {g.task.name: g.groups},
            sp_split.means, sp_split.held_out,
        )[g.task.name]  # fmt: skip
    return Finding(findings, steps, held)
