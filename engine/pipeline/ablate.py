"""Zero-shot evaluation and exact mean-ablation over a store: plan -> compute -> write.

Everything is arithmetic on the stored decomposition (`engine.core.ablation`); no image is run
through the model. The model's text tower is needed only to embed the tasks' class prompts,
once: the class embeddings are cached in the store (`zeroshot_classes`) and reused by later runs
and by the dashboard's Ablation page.

Tasks come from `engine.sources.tasks` (world factors, class folders, or a mapping file).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd

from engine.core import ablation
from engine.core.ablation import AblationResult, ComponentSet
from engine.core.zeroshot import ZeroShotTask, class_embeddings
from engine.errors import UserError
from engine.pipeline import provenance
from engine.sources.tasks import TaskSpec, task_specs
from engine.store import DatabaseWriter, mutate_store, open_store
from engine.store.decomposition import (
    cached_class_embeddings,
    load_components,
    zeroshot_rows,
)


@dataclass
class AblateParams:
    store: str
    ablate: str  # the spec language of engine.core.ablation_spec
    tasks: str | None = None  # factors | folders | FILE (default: factors if the store has them)
    random: int = 10
    split: float = 0.5
    seed: int = 0
    per_head: bool = False  # also each stored head ablated alone (the Heads page's evidence)
    write: bool = True


def encode_tasks(
    info: dict, specs: list[TaskSpec], progress: bool = False
) -> dict[str, np.ndarray]:
    """Class embeddings [class, d_embed] per task with the store's model (loaded once)."""
    from engine.pipeline.interpret import text_embeddings

    texts = [t for s in specs for p in s.prompts for t in p]
    table = dict(zip(texts, text_embeddings(info, texts, progress=progress), strict=True))
    return {s.name: class_embeddings(lambda t: np.stack([table[x] for x in t]), prompts=s.prompts)
            for s in specs}  # fmt: skip


# ------------------------------------------------------------------------------------- run


@dataclass
class AblateRun:
    run_id: str
    spec: str
    tasks_source: str
    result: AblationResult
    head_effects: pd.DataFrame | None
    timings: dict

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "spec": self.spec, "tasks_source": self.tasks_source,
                "timings": self.timings, **self.result.to_dict()}  # fmt: skip


def run_ablate(p: AblateParams, progress: bool = False) -> AblateRun:
    t0 = time.perf_counter()
    started = pd.Timestamp(provenance.now())
    if p.random < 0:
        raise UserError("--random must be 0 or more")
    with open_store(p.store) as r:
        info = dict(r.info)
        version = r.version_path
        source, specs = task_specs(r, p.tasks)
        labels = r.head_labels()
        heads = [(l, h) for l in r.layers for h in range(int(info["n_heads"]))]
        names = ablation.parse_ablation_spec(
            p.ablate, heads, labels, int(info["n_layers"]), stored_layers=r.layers
        )
        emb = cached_class_embeddings(r, specs)
        output, comps = load_components(r)
    t_read = time.perf_counter() - t0
    missing = [s for s in specs if s.name not in emb]
    if missing:
        emb.update(encode_tasks(info, missing, progress))
    t_text = time.perf_counter() - t0 - t_read
    tasks = [ZeroShotTask(s.name, tuple(s.class_names), s.labels, emb[s.name]) for s in specs]
    fit, ev = ablation.split(len(output), p.split, p.seed)
    result = ablation.run_ablation(
        output, comps, names, tasks, fit, ev, random_draws=p.random, seed=p.seed
    )
    effects = _head_effects(output, comps, tasks, fit, ev) if p.per_head else None
    timings = {
        "read_s": t_read,
        "text_s": t_text,
        "ablate_s": time.perf_counter() - t0 - t_read - t_text,
    }
    timings = {k: round(v, 3) for k, v in timings.items()}
    run = AblateRun(uuid.uuid4().hex, p.ablate, source, result, effects, timings)
    if p.write:
        _write(p, run, info, version, specs, emb, started)
    return run


def _head_effects(output, comps: ComponentSet, tasks, fit, ev) -> pd.DataFrame:
    """Each stored head mean-ablated alone: accuracy per task before and after."""
    scorer = ablation.AblationScorer(ablation.Ablator(output, comps, fit, ev), tasks)
    before = {t.name: t.accuracy for t in scorer.score([])}
    rows = []
    for c in comps.heads:
        for t in scorer.score([c.name]):
            rows.append({"layer": c.layer, "head": c.head, "task": t.name,
                         "before": before[t.name], "after": t.accuracy,
                         "drop": before[t.name] - t.accuracy})  # fmt: skip
    return pd.DataFrame(rows)


def _write(p: AblateParams, run: AblateRun, info, version, specs, emb, started) -> None:
    res = run.result
    runs = pd.DataFrame([{
        "run_id": run.run_id, "spec": run.spec, "ablated": json.dumps(list(res.ablated)),
        "tasks_source": run.tasks_source, "n_fit": res.n_fit, "n_eval": res.n_eval,
        "split": p.split, "seed": p.seed, "random_draws": len(res.random_draws),
        "result": json.dumps(res.to_dict()),
    }])  # fmt: skip
    results = pd.DataFrame([
        {"run_id": run.run_id, "task": t.task, "n_eval": t.n_eval, "before": t.before,
         "after": t.after, "drop": t.drop, "random_mean": t.random_mean,
         "random_sd": t.random_sd, "random_best": t.random_best}
        for t in res.tasks
    ])  # fmt: skip
    params = {"ablate": p.ablate, "tasks": run.tasks_source, "random": p.random,
              "split": p.split, "seed": p.seed, "per_head": p.per_head}  # fmt: skip
    with mutate_store(p.store, expect_version=version) as con:
        db = DatabaseWriter(con)
        db.append("ablation_runs", runs)
        db.append("ablation_results", results)
        names = [s.name for s in specs]
        con.execute(
            f"DELETE FROM zeroshot_classes WHERE task IN ({', '.join('?' * len(names))})", names
        )
        db.append("zeroshot_classes", zeroshot_rows(specs, emb))
        if run.head_effects is not None:
            con.execute("DELETE FROM head_effects")  # the latest per-head evidence only
            db.append("head_effects", run.head_effects.assign(run_id=run.run_id))
        provenance.insert_run(con, "ablate", run.run_id, info, params, run.timings, started)
