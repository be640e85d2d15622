"""Zero-shot tasks of a store and exact mean-ablation over its stored decomposition.

`ablate(session, spec, ...)` is what `python -m engine ablate` runs (the pipeline then records
it in the store) and what the dashboard's Ablation page shows: one function, one result.
Everything is arithmetic on the stored decomposition (`engine.core.ablation`); the model's text
tower embeds the tasks' class prompts only when the store has not cached them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from engine.core import ablation
from engine.core.ablation import AblationResult, ComponentSet
from engine.core.baseline import BaselineCheck, check_baseline
from engine.core.neuron_spec import is_neuron_spec
from engine.core.zeroshot import ZeroShotTask, class_embeddings
from engine.errors import UserError
from engine.sources.tasks import TaskSpec, task_specs
from engine.store.decomposition import cached_class_embeddings


@dataclass
class Tasks:
    """A store's zero-shot tasks: the source used, the specs, the tasks with class embeddings
    [class, d_embed], and which tasks' embeddings were computed now (not cached in the store)."""

    source: str
    specs: list[TaskSpec]
    tasks: list[ZeroShotTask]
    embeddings: dict[str, np.ndarray]
    encoded: list[str] = field(default_factory=list)


def zeroshot_tasks(s, source: str | None = None, *, progress: bool = False) -> Tasks:
    """The store's tasks (`factors`, `folders` or a mapping FILE; default: factors when the
    store has them), their class embeddings from the store's cache or the store's model."""

    def compute() -> Tasks:
        used, specs = task_specs(s.reader, source)
        emb = cached_class_embeddings(s.reader, specs)
        encoded = [sp.name for sp in specs if sp.name not in emb]
        missing = [sp for sp in specs if sp.name not in emb]
        if missing:
            texts = list(dict.fromkeys(t for sp in missing for p in sp.prompts for t in p))
            table = dict(zip(texts, s.text_embeddings(texts, progress=progress), strict=True))
            for sp in missing:
                emb[sp.name] = class_embeddings(
                    lambda t: np.stack([table[x] for x in t]), prompts=sp.prompts
                )  # [class, d_embed]
        tasks = [ZeroShotTask(sp.name, tuple(sp.class_names), sp.labels, emb[sp.name])
                 for sp in specs]  # fmt: skip
        return Tasks(used, specs, tasks, emb, encoded)

    return s._once.get(("tasks", source), compute)


@dataclass
class Ablation:
    """One ablation: the spec, the task source, the result (per task: before, after, drop,
    random baseline), each stored head alone when asked (`head_effects`), the tasks used, and
    whether the random baseline can differ from the ablated set (`baseline`; None when no
    random draws were asked for)."""

    spec: str
    tasks: Tasks
    result: AblationResult
    head_effects: pd.DataFrame | None
    timings: dict
    baseline: BaselineCheck | None = None

    @property
    def tasks_source(self) -> str:
        return self.tasks.source

    @property
    def baseline_note(self) -> str:
        """One sentence when the random baseline says little (the CLI, JSON and page show it);
        "" when it is sound or was not drawn."""
        return self.baseline.note if self.baseline is not None else ""


def ablate(
    s,
    spec: str,
    *,
    tasks: str | None = None,
    random: int = 10,
    split: float = 0.5,
    seed: int = 0,
    per_head: bool = False,
    progress: bool = False,
) -> Ablation:
    """Mean-ablate the components `spec` names (`engine.core.ablation_spec`) and measure
    zero-shot accuracy on a held-out split, against `random` draws of as many random heads
    per layer; `per_head`: also each stored head alone."""
    if random < 0:
        raise UserError("--random must be 0 or more")
    if is_neuron_spec(spec):  # (a spec mixing neurons with heads raises here)
        raise UserError(f"{spec!r} names MLP neurons: they are ablated by `ablate_neurons`")
    t0 = time.perf_counter()
    names = ablation.parse_ablation_spec(
        spec, s.heads(), s.head_labels(), s.model_record.n_layers, stored_layers=s.layers
    )
    output, comps = s.components()
    t_read = time.perf_counter() - t0
    ts = zeroshot_tasks(s, tasks, progress=progress)
    t_text = time.perf_counter() - t0 - t_read
    fit, ev = ablation.split(len(output), split, seed)
    result = ablation.run_ablation(
        output, comps, names, ts.tasks, fit, ev, random_draws=random, seed=seed
    )
    effects = head_effects(output, comps, ts.tasks, fit, ev) if per_head else None
    baseline = check_baseline(comps, result.ablated) if random > 0 else None
    timings = {"read_s": t_read, "text_s": t_text,
               "ablate_s": time.perf_counter() - t0 - t_read - t_text}  # fmt: skip
    timings = {k: round(v, 3) for k, v in timings.items()}
    return Ablation(spec, ts, result, effects, timings, baseline)


def head_effects(output, comps: ComponentSet, tasks, fit, ev) -> pd.DataFrame:
    """Each stored head mean-ablated alone: accuracy per task before and after (columns layer,
    head, task, before, after, drop)."""
    scorer = ablation.AblationScorer(ablation.Ablator(output, comps, fit, ev), tasks)
    before = {t.name: t.accuracy for t in scorer.score([])}
    rows = []
    for c in comps.heads:
        for t in scorer.score([c.name]):
            rows.append({"layer": c.layer, "head": c.head, "task": t.name,
                         "before": before[t.name], "after": t.accuracy,
                         "drop": before[t.name] - t.accuracy})  # fmt: skip
    return pd.DataFrame(rows)
