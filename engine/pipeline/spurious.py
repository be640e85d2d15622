"""Spurious cues over a store: rank the heads that carry a shortcut, repair worst-group accuracy
by removing them, check the repair on held-out images (plan -> compute -> write).

Math in `engine.core.spurious` and `engine.core.groups`; tasks with groups come from
`engine.sources.tasks` (`groups` for the demo world, or a `path,class,group` FILE). Everything is
arithmetic on the stored decomposition; the model's text tower embeds the class prompts (cached
in the store, like `ablate`) and the spurious/core texts.

Also the group half of `ablate` (`grouped_tasks`, `group_rows`): a grouped task's per-group,
worst-group and mean accuracy before/after an ablation, beside its random draws.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from engine.core import spurious as sp
from engine.core.ablation import random_baseline
from engine.core.ablation_spec import format_ablation_spec
from engine.core.groups import GroupAblation, GroupLabels, GroupScores, group_ablation
from engine.core.zeroshot import ZeroShotTask, class_embeddings
from engine.errors import UserError
from engine.pipeline import provenance
from engine.session import StoreSession
from engine.sources import world
from engine.sources.tasks import TaskSpec, task_specs
from engine.store import mutate_store
from engine.store.decomposition import cached_class_embeddings, zeroshot_rows

# ------------------------------------------------------------------------- groups for ablate


def grouped_tasks(specs: list[TaskSpec]) -> dict[str, GroupLabels]:
    """The grouped tasks' groups [image] by task name."""
    return {
        s.name: GroupLabels(s.groups, tuple(s.group_names or ()))
        for s in specs
        if s.groups is not None
    }


def group_rows(run_id: str, groups: dict[str, GroupAblation]) -> pd.DataFrame:
    """`ablation_groups` rows: one per (task, group)."""
    rows = []
    for t, ga in groups.items():
        rnd = (
            np.nanmean([r.accuracy for r in ga.random], axis=0)
            if ga.random
            else np.full(len(ga.before.names), np.nan)
        )
        for i, name in enumerate(ga.before.names):
            rows.append({"run_id": run_id, "task": t, "grp": name,
                         "count": int(ga.before.count[i]),
                         "before": _num(ga.before.accuracy[i]),
                         "after": _num(ga.after.accuracy[i]), "random_mean": _num(rnd[i])})  # fmt: skip
    return pd.DataFrame(rows)


def _num(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else x


def format_groups(groups: dict[str, GroupAblation]) -> str:
    """The CLI's table of a grouped ablation."""
    lines = []
    for t, ga in groups.items():
        rw = ga.random_worst
        rnd = f"{rw.mean():.3f} ± {rw.std(ddof=1) if rw.size > 1 else 0:.3f}" if rw.size else "-"
        lines.append(
            f"{t}: worst-group {ga.before.worst:.3f} → {ga.after.worst:.3f} "
            f"({ga.before.worst_group} → {ga.after.worst_group}); mean {ga.before.mean:.3f} → "
            f"{ga.after.mean:.3f}; random heads' worst-group {rnd}"
        )
        lines.append(f"  {'group':<24} {'n':>5} {'before':>7} {'after':>7} {'random':>7}")
        rnd_acc = np.nanmean([r.accuracy for r in ga.random], axis=0) if ga.random else None
        for i, name in enumerate(ga.before.names):
            if ga.before.count[i] == 0:
                continue
            r = f"{rnd_acc[i]:7.3f}" if rnd_acc is not None else f"{'-':>7}"
            lines.append(
                f"  {name:<24} {int(ga.before.count[i]):5d} {ga.before.accuracy[i]:7.3f} "
                f"{ga.after.accuracy[i]:7.3f} {r}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- spurious


@dataclass
class SpuriousParams:
    store: str
    tasks: str | None = None  # groups (demo world) | a path,class,group FILE
    task: str | None = None  # which grouped task, when the source has several
    spurious: str | None = None  # comma-separated texts (default for the world: background)
    core: str | None = None  # comma-separated texts (default for the world: shape)
    repair: int = 0  # K: choose up to K heads greedily (0: rank only)
    random: int = 10
    split: float = 0.5
    seed: int = 0
    max_mean_drop: float = 0.05
    write: bool = True


@dataclass
class SpuriousRun:
    run_id: str
    task: str
    tasks_source: str
    split: sp.SpuriousSplit
    spurious_texts: list[str]
    core_texts: list[str]
    before: GroupScores  # on the score images (fitting half)
    findings: list[sp.HeadFinding]
    steps: list[sp.RepairStep]
    held_out: GroupAblation | None  # the repair and its random draws on held-out images
    labels: dict[tuple[int, int], str] = field(default_factory=dict)
    timings: dict = field(default_factory=dict)

    @property
    def chosen(self) -> tuple[str, ...]:
        return self.steps[-1].heads if self.steps else ()

    @property
    def spec(self) -> str:
        return format_ablation_spec(self.chosen)

    def by_alignment(self) -> list[sp.HeadFinding]:
        return sorted(self.findings, key=lambda f: -np.nan_to_num(f.alignment, nan=-np.inf))

    def to_dict(self) -> dict:
        return {
            "run_id": self.run_id,
            "task": self.task,
            "tasks_source": self.tasks_source,
            "n_means": len(self.split.means),
            "n_score": len(self.split.score),
            "n_held_out": len(self.split.held_out),
            "spurious_texts": self.spurious_texts,
            "core_texts": self.core_texts,
            "before_fitting": self.before.to_dict(),
            "heads": [
                {**f.to_dict(), "label": self.labels.get((f.layer, f.head), "")}
                for f in self.findings
            ],
            "repair": [
                {"added": s.added, "spec": s.spec, "worst": s.worst, "mean": s.mean}
                for s in self.steps
            ],
            "spec": self.spec,
            "held_out": None if self.held_out is None else self.held_out.to_dict(),
            "timings": self.timings,
        }


def _texts(arg: str | None) -> list[str]:
    return [t.strip() for t in (arg or "").split(",") if t.strip()]


def _default_texts(source: str) -> tuple[list[str], list[str]]:
    """The demo world's own words: the spurious factor's and the core factor's value texts."""
    if source != "groups":
        return [], []
    flat = [t for ts in world.value_texts(world.BIAS.spurious) for t in ts]
    core = [t for ts in world.value_texts(world.BIAS.core) for t in ts]
    return flat, core


def run_spurious(p: SpuriousParams, progress: bool = False) -> SpuriousRun:
    """Rank, repair and check over a store's grouped task (through its `StoreSession`),
    recorded in the store unless `write` is off."""
    t0 = time.perf_counter()
    started = provenance.now()
    if p.repair < 0 or p.random < 0:
        raise UserError("--repair and --random must be 0 or more")
    if p.max_mean_drop is not None and p.max_mean_drop < 0:
        raise UserError("--max-mean-drop must be 0 or more")
    sp_texts, co_texts = _texts(p.spurious), _texts(p.core)
    if bool(sp_texts) != bool(co_texts):
        raise UserError("give both --spurious and --core texts, or neither")
    with StoreSession.open(p.store) as s:
        default = "groups" if s.reader.factors() is not None else None
        source, specs = task_specs(s.reader, p.tasks or default)
        grouped = [x for x in specs if x.groups is not None]
        if not grouped:
            raise UserError(
                f"--tasks {source}: no task has groups; use --tasks groups (demo world) or a "
                "FILE of path,class,group lines"
            )
        if p.task is not None:
            grouped = [x for x in grouped if x.name == p.task]
            if not grouped:
                names = ", ".join(x.name for x in specs if x.groups is not None)
                raise UserError(f"--task {p.task!r}: not a grouped task (grouped: {names})")
        spec = grouped[0]
        labels = s.head_labels()
        output, comps = s.components()
        if not comps.heads:
            raise UserError(f"{p.store} stores no heads: rebuild it with --layers")
        if not sp_texts:
            sp_texts, co_texts = _default_texts(source)
        t_read = time.perf_counter() - t0
        # one pass through the text tower: the class prompts (unless cached) and the texts
        emb = cached_class_embeddings(s.reader, [spec])
        prompts = [] if spec.name in emb else [t for ps in spec.prompts for t in ps]
        texts = list(dict.fromkeys(prompts + sp_texts + co_texts))
        vecs = s.text_embeddings(texts, progress=progress) if texts else []
        table = dict(zip(texts, vecs, strict=True))
        if spec.name not in emb:
            emb[spec.name] = class_embeddings(
                lambda t: np.stack([table[x] for x in t]), prompts=spec.prompts
            )  # [class, d_embed]
        t_text = time.perf_counter() - t0 - t_read
        run = _search(p, spec, emb[spec.name], output, comps, table, sp_texts, co_texts, source)
        run.labels = labels
        run.timings = {"read_s": round(t_read, 3), "text_s": round(t_text, 3),
                       "search_s": round(time.perf_counter() - t0 - t_read - t_text, 3)}  # fmt: skip
        if p.write:
            _write(p, run, s, spec, emb, started)
    return run


def _search(p, spec, class_emb, output, comps, table, sp_texts, co_texts, source) -> SpuriousRun:
    """The finder, the repair and its held-out check (engine.core.spurious, groups)."""
    task = ZeroShotTask(spec.name, tuple(spec.class_names), spec.labels, class_emb)
    groups = GroupLabels(spec.groups, tuple(spec.group_names or ()))
    split_ = sp.spurious_split(len(output), p.split, p.seed)
    for what, idx in (("score", split_.score), ("held-out", split_.held_out)):
        if not ((task.labels[idx] >= 0) & (groups.groups[idx] >= 0)).any():
            raise UserError(f"no grouped image falls in the {what} images; use more images")
    align = None
    if sp_texts:
        align = sp.head_alignment(
            comps,
            split_.fitting,
            np.stack([table[t] for t in sp_texts]),
            np.stack([table[t] for t in co_texts]),
        )
    before, findings = sp.head_effects(output, comps, task, groups, split_, align)
    steps: list[sp.RepairStep] = []
    held = None
    if p.repair:
        steps = sp.greedy_repair(
            output, comps, task, groups, split_, p.repair, max_mean_drop=p.max_mean_drop
        )
    if steps:  # the held-out half sees the final choice only
        chosen = list(steps[-1].heads)
        draws = random_baseline(comps, chosen, draws=p.random, seed=p.seed)
        held = group_ablation(
            output, comps, chosen, draws, [task], {task.name: groups},
            split_.means, split_.held_out,
        )[task.name]  # fmt: skip
    return SpuriousRun(
        uuid.uuid4().hex, spec.name, source, split_, sp_texts, co_texts, before, findings,
        steps, held,
    )  # fmt: skip


def _write(p: SpuriousParams, run: SpuriousRun, s, spec: TaskSpec, emb, started: str) -> None:
    res = run.to_dict()
    runs = pd.DataFrame([{
        "run_id": run.run_id, "task": run.task, "tasks_source": run.tasks_source,
        "spurious_texts": json.dumps(run.spurious_texts), "core_texts": json.dumps(run.core_texts),
        "k": p.repair, "spec": run.spec, "n_means": len(run.split.means),
        "n_score": len(run.split.score), "n_held_out": len(run.split.held_out),
        "split": p.split, "seed": p.seed, "result": json.dumps(res),
    }])  # fmt: skip
    heads = pd.DataFrame([
        {"run_id": run.run_id, "rank": i + 1, "layer": f.layer, "head": f.head,
         "effect": f.effect, "worst_after": f.worst_after, "mean_after": f.mean_after,
         "spurious_share": _num(f.spurious_share), "core_share": _num(f.core_share),
         "alignment": _num(f.alignment)}
        for i, f in enumerate(run.findings)
    ])  # fmt: skip
    params = {"tasks": run.tasks_source, "task": run.task, "spurious": run.spurious_texts,
              "core": run.core_texts, "repair": p.repair, "random": p.random, "split": p.split,
              "seed": p.seed, "max_mean_drop": p.max_mean_drop}  # fmt: skip
    record = provenance.run_record("spurious", run.run_id, s, params, run.timings, started)
    with mutate_store(p.store, expect_version=s.version_path) as w:
        for t in ("spurious_runs", "spurious_heads", "ablation_groups"):
            w.ensure(t)
        w.append("spurious_runs", runs)
        w.append("spurious_heads", heads)
        if run.held_out is not None:
            w.append("ablation_groups", group_rows(run.run_id, {run.task: run.held_out}))
        w.replace_zeroshot_classes(zeroshot_rows([spec], emb))
        w.record_run(record)


# ------------------------------------------------------------------------- the biased demo


def build_biased_demo(
    store: str = "artifacts/demo_biased",
    *,
    images: int = 5000,
    seed: int = 0,
    batch_size: int = 128,
    force: bool = False,
    progress: bool = True,
    repair: int = 4,
) -> SpuriousRun:
    """The planted-shortcut demo: the `demo-biased` model's store over the *balanced* world
    (every layer's heads), interpreted offline with the world bank, then `spurious --repair`;
    the repair is also recorded as an ablation run (the Ablation page's group chart)."""
    from engine.pipeline.ablate import AblateParams, run_ablate
    from engine.pipeline.build import BuildParams, build_store
    from engine.pipeline.interpret import run_interpretation

    res = build_store(
        BuildParams(
            model="demo-biased", images=f"synthetic:{images}:{seed}", store=store,
            batch_size=batch_size, layers="all", force=force, progress=progress,
        )
    )  # fmt: skip
    with StoreSession.open(store) as s:
        interpreted = s.reader.interpreted
    if force or not res.up_to_date or not interpreted:
        run_interpretation(store, labeller="offline", bank="world")
    run = run_spurious(SpuriousParams(store, tasks="groups", repair=repair))
    if run.steps:
        run_ablate(AblateParams(store, run.spec, tasks="groups"))
    return run
