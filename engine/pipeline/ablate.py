"""Zero-shot evaluation and exact mean-ablation over a store: plan -> compute -> write.

Everything is arithmetic on the stored decomposition (`engine.core.ablation`); no image is run
through the model. The model's text tower is needed only to embed the tasks' class prompts,
once: the class embeddings are cached in the store (`zeroshot_classes`) and reused by later runs
and by the dashboard's Ablation page.

Tasks come from `engine.sources.tasks` (world factors, class folders, or a mapping file).
A neuron spec (`L6N12`, `neurons:L6:significant`) runs `StoreSession.ablate_neurons` instead and
is recorded in the neuron ablation tables (`run_ablate_neurons`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import pandas as pd

from engine.core.ablation import AblationResult
from engine.core.baseline import BaselineCheck
from engine.core.layers import head_name
from engine.pipeline import provenance
from engine.session import StoreSession
from engine.store import mutate_store
from engine.store.decomposition import zeroshot_rows


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


# ------------------------------------------------------------------------------------- run


@dataclass
class AblateRun:
    run_id: str
    spec: str
    tasks_source: str
    result: AblationResult
    head_effects: pd.DataFrame | None
    timings: dict
    baseline: BaselineCheck | None = None  # can the random baseline differ from the ablation?
    groups: dict = field(default_factory=dict)  # task -> core.groups.GroupAblation

    def to_dict(self) -> dict:
        out = {"run_id": self.run_id, "spec": self.spec, "tasks_source": self.tasks_source,
               "timings": self.timings, **self.result.to_dict()}  # fmt: skip
        if self.baseline is not None:
            out["baseline"] = self.baseline.to_dict()
        if self.head_effects is not None:
            out["per_head"] = per_head_records(self.head_effects)
        if self.groups:
            out["groups"] = [g.to_dict() for g in self.groups.values()]
        return out


def per_head_records(effects: pd.DataFrame) -> list[dict]:
    """`--per-head` rows for JSON: {name, layer, head, task, before, after, drop}, in head order."""
    df = effects.sort_values(["layer", "head"], kind="stable")
    return [
        {"name": head_name(int(r.layer), int(r.head)), "layer": int(r.layer), "head": int(r.head),
         "task": str(r.task), "before": float(r.before), "after": float(r.after),
         "drop": float(r.drop)}
        for r in df.itertuples(index=False)
    ]  # fmt: skip


def run_ablate(p: AblateParams, progress: bool = False) -> AblateRun:
    """`StoreSession.ablate` (the computation the Ablation page shows), recorded in the store
    unless `write` is off."""
    started = provenance.now()
    with StoreSession.open(p.store) as s:
        a = s.ablate(p.ablate, tasks=p.tasks, random=p.random, split=p.split, seed=p.seed,
                     per_head=p.per_head, progress=progress)  # fmt: skip
        run = AblateRun(uuid.uuid4().hex, p.ablate, a.tasks_source, a.result, a.head_effects,
                        a.timings, a.baseline)  # fmt: skip
        run.groups = _groups(p, s, a)
        if p.write:
            _write(p, run, s, a, started)
    return run


def _groups(p: AblateParams, s, a) -> dict:
    """The grouped tasks' group accuracies over the same split and random draws."""
    from engine.core.ablation import split
    from engine.core.groups import group_ablation
    from engine.pipeline.spurious import grouped_tasks

    groups = grouped_tasks(a.tasks.specs)
    if not groups:
        return {}
    output, comps = s.components()
    fit, ev = split(len(output), p.split, p.seed)
    res = a.result
    return group_ablation(output, comps, res.ablated, res.random_draws, a.tasks.tasks, groups,
                          fit, ev)  # fmt: skip


def _write(p: AblateParams, run: AblateRun, s, a, started: str) -> None:
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
    record = provenance.run_record("ablate", run.run_id, s, params, run.timings, started)
    with mutate_store(p.store, expect_version=s.version_path) as w:
        w.append("ablation_runs", runs)
        w.append("ablation_results", results)
        w.replace_zeroshot_classes(zeroshot_rows(a.tasks.specs, a.tasks.embeddings))
        if run.head_effects is not None:  # the latest per-head evidence only
            w.replace("head_effects", run.head_effects.assign(run_id=run.run_id))
        if run.groups:
            from engine.pipeline.spurious import group_rows

            w.ensure("ablation_groups")
            w.append("ablation_groups", group_rows(run.run_id, run.groups))
        w.record_run(record)


# ------------------------------------------------------------------------------ neurons


@dataclass
class NeuronAblateRun:
    run_id: str
    ablation: object  # engine.session.neuron_ablation.NeuronAblation
    written: bool

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "timings": self.ablation.timings,
                **self.ablation.to_dict()}  # fmt: skip


def run_ablate_neurons(p: AblateParams) -> NeuronAblateRun:
    """`StoreSession.ablate_neurons` (what the Ablation page shows for neurons), recorded in the
    store's neuron ablation tables and `runs` unless `write` is off. Bad input raises before
    anything is written."""
    from engine.errors import UserError

    if p.per_head:
        raise UserError("--per-head ablates each stored head alone: it does not apply to neurons")
    started = provenance.now()
    with StoreSession.open(p.store) as s:
        a = s.ablate_neurons(p.ablate, tasks=p.tasks, random=p.random, split=p.split, seed=p.seed)
        run = NeuronAblateRun(uuid.uuid4().hex, a, p.write)
        if p.write:
            _write_neurons(p, run, s, a, started)
    return run


def neuron_ablation_rows(run_id: str, a, p: AblateParams) -> dict[str, pd.DataFrame]:
    """The rows one neuron ablation appends: {table: rows} of schema.NEURON_ABLATION_TABLES."""
    b = a.baseline
    runs = pd.DataFrame([{
        "run_id": run_id, "spec": a.spec, "n_ablated": a.n_ablated,
        "tasks_source": a.tasks_source, "n_fit": a.n_fit, "n_eval": a.n_eval, "split": p.split,
        "seed": p.seed, "random_draws": p.random, "baseline": b.status if b else None,
        "baseline_note": b.note if b else None, "result": json.dumps(a.to_dict()),
    }])  # fmt: skip
    results = pd.DataFrame([
        {"run_id": run_id, "task": t.task, "n_eval": t.n_eval, "before": t.before,
         "after": t.after, "drop": t.drop, "random_mean": t.random_mean,
         "random_sd": t.random_sd, "random_best": t.random_best}
        for t in a.tasks
    ])  # fmt: skip
    units = pd.DataFrame(
        [{"run_id": run_id, "layer": int(l), "neuron": int(n)}
         for l, v in a.neurons.items() for n in v]
    )  # fmt: skip
    return {"neuron_ablation_runs": runs, "neuron_ablation_results": results,
            "neuron_ablation_units": units}  # fmt: skip


def _write_neurons(p: AblateParams, run: NeuronAblateRun, s, a, started: str) -> None:
    params = {"ablate": p.ablate, "tasks": a.tasks_source, "random": p.random,
              "split": p.split, "seed": p.seed, "neurons": a.n_ablated}  # fmt: skip
    record = provenance.run_record("ablate", run.run_id, s, params, a.timings, started)
    from engine.session.ablation import zeroshot_tasks

    ts = zeroshot_tasks(s, p.tasks)  # cached in the session: the tasks the ablation used
    with mutate_store(p.store, expect_version=s.version_path) as w:
        w.add_neuron_ablation(neuron_ablation_rows(run.run_id, a, p))
        w.replace_zeroshot_classes(zeroshot_rows(ts.specs, ts.embeddings))
        w.record_run(record)
