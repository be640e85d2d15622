"""Recorded neuron ablations (`schema.NEURON_ABLATION_TABLES`): written by `ablate` of neurons
(`engine.pipeline.ablate.run_ablate_neurons`), read by the Neurons page and the unit pages.

Stores older than these tables lack them until their first recorded neuron ablation: the readers
then return empty frames with the tables' columns.
"""

from __future__ import annotations

import pandas as pd

from engine.store import schema

DROP_COLUMNS = ["run_id", "spec", "n_ablated", "alone", "task", "n_eval", "before", "after",
                "drop", "random_mean", "random_sd", "finished_at"]  # fmt: skip
"""The columns of `neuron_ablation_drops`."""


def _has(reader, table: str) -> bool:
    got = reader.query(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = ?", [table]
    )
    return bool(got["n"].iloc[0])


def _columns(table: str) -> list[str]:
    lines = [x.strip() for x in schema.TABLES[table].strip().splitlines()[1:-1]]
    return [x.split()[0] for x in lines if x and not x.startswith("--")]


def neuron_ablation_runs(reader) -> pd.DataFrame:
    """Every recorded neuron ablation (schema `neuron_ablation_runs`) with its `finished_at` from
    the `runs` table, the latest first; empty (with the columns) when none was recorded."""
    if not _has(reader, "neuron_ablation_runs"):
        return pd.DataFrame(columns=[*_columns("neuron_ablation_runs"), "finished_at"])
    return reader.query(
        "SELECT a.*, r.finished_at FROM neuron_ablation_runs a LEFT JOIN runs r USING (run_id) "
        "ORDER BY r.finished_at DESC NULLS LAST, a.run_id"
    )


def neuron_ablation_results(reader, run_id: str) -> pd.DataFrame:
    """One recorded run's per-task rows (schema `neuron_ablation_results`), by task."""
    if not _has(reader, "neuron_ablation_results"):
        return pd.DataFrame(columns=_columns("neuron_ablation_results"))
    return reader.query(
        "SELECT * FROM neuron_ablation_results WHERE run_id = ? ORDER BY task", [str(run_id)]
    )


def neuron_ablation_drops(reader, layer: int, neuron: int) -> pd.DataFrame:
    """The recorded accuracy drops of every neuron ablation that removed neuron `neuron` of
    layer `layer`: one row per (run, task) with DROP_COLUMNS — the run's spec, how many neurons
    it ablated (`alone`: only this one, the neuron's own drop; else the drop of the set it was
    in), before / after / drop and the random-neuron baseline's mean and sd — the latest run
    first. Empty (with the columns) when no recorded run ablated it."""
    if not _has(reader, "neuron_ablation_units"):
        return pd.DataFrame(columns=DROP_COLUMNS)
    got = reader.query(
        "SELECT a.run_id, a.spec, a.n_ablated, a.n_ablated = 1 AS alone, x.task, x.n_eval, "
        "x.before, x.after, x.drop, x.random_mean, x.random_sd, r.finished_at "
        "FROM neuron_ablation_units u JOIN neuron_ablation_runs a USING (run_id) "
        "JOIN neuron_ablation_results x USING (run_id) LEFT JOIN runs r USING (run_id) "
        "WHERE u.layer = ? AND u.neuron = ? "
        "ORDER BY r.finished_at DESC NULLS LAST, a.run_id, x.task",
        [int(layer), int(neuron)],
    )
    return got[DROP_COLUMNS]
