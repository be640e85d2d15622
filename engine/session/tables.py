"""The store's tables assembled for people: one row per head with everything known about it.

Used by the notebook API (`Store.heads`) and the dashboard's Heads page; no math.
"""

from __future__ import annotations

import pandas as pd

from engine.core.layers import head_name


def heads_table(s, texts: int = 5) -> pd.DataFrame:
    """One row per stored head (layer-major): name, layer, head, label, labeller (None before
    `interpret`), top_texts [(text, variance removed)] (its first `texts` TextSpan texts), and
    where the store has them: gt_factor, gt_eta2, gt_match (demo-world ground truth),
    ablation_drop_own_task (accuracy lost on its label's task when ablated alone: `ablate
    --per-head`), seg_pointing, seg_miou (the latest `segeval`)."""
    r = s.reader
    df = pd.DataFrame(s.heads(), columns=["layer", "head"])
    df.insert(0, "name", [head_name(l, h) for l, h in s.heads()])
    lab = r.head_label_rows()[["layer", "head", "label", "labeller"]]
    df = df.merge(lab.drop_duplicates(["layer", "head"]), on=["layer", "head"], how="left")
    df = df.astype({"label": object, "labeller": object})
    df[["label", "labeller"]] = df[["label", "labeller"]].where(
        df[["label", "labeller"]].notna(), None
    )
    ts = r.textspan()
    top = {
        (int(l), int(h)): [(str(t), float(v)) for t, v in
                           zip(g["text"][:texts], g["variance_removed"][:texts], strict=True)]
        for (l, h), g in ts.groupby(["layer", "head"])
    }  # fmt: skip
    df["top_texts"] = [top.get((l, h), []) for l, h in zip(df["layer"], df["head"], strict=True)]
    gt = r.table("ground_truth")
    if len(gt):
        dom = gt[gt["is_dominant"]].sort_values("eta2", ascending=False)
        dom = dom.drop_duplicates(["layer", "head"])[["layer", "head", "factor", "eta2", "match"]]
        dom = dom.rename(columns={"factor": "gt_factor", "eta2": "gt_eta2", "match": "gt_match"})
        df = df.merge(dom, on=["layer", "head"], how="left")
    eff = r.table("head_effects")
    if len(eff):
        own = (
            df[["layer", "head", "label"]]
            .merge(eff, left_on=["layer", "head", "label"], right_on=["layer", "head", "task"])[
                ["layer", "head", "drop"]
            ]
            .rename(columns={"drop": "ablation_drop_own_task"})
        )
        df = df.merge(own, on=["layer", "head"], how="left")
    seg = r.table("segmentation_scores")
    run_id = latest_run_id(r, "segeval", seg["run_id"].unique()) if len(seg) else None
    if run_id is not None:
        latest = seg[(seg["run_id"] == run_id) & (seg["scope"] == "head")]
        latest = latest[["layer", "head", "pointing", "miou"]].rename(
            columns={"pointing": "seg_pointing", "miou": "seg_miou"}
        )
        df = df.merge(latest, on=["layer", "head"], how="left")
    return df


def latest_run_id(r, kind: str, among) -> str | None:
    """The run of `kind` among the run ids `among` that finished last, by the `runs` table's
    finish time (run ids are uuids and table rows have no order). A single id without a `runs`
    row is that one; several without rows are not ordered: None."""
    among = [str(x) for x in among]
    runs = r.runs(kind)
    runs = runs[runs["run_id"].isin(among)]
    if len(runs):
        return str(
            runs.sort_values(["finished_at", "started_at"], kind="stable")["run_id"].iloc[-1]
        )
    return among[0] if len(among) == 1 else None
