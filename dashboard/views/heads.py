"""Heads: every stored (layer, head) with its label, TextSpan texts, reference and ground truth."""

from __future__ import annotations

import io

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import charts, paper, state, stores, tables, widgets
from engine.core.layers import head_name

st.title("Heads")
ctx = state.page_context()
store = widgets.require_store(ctx)


@st.cache_data(show_spinner=False, max_entries=8)
def heads_table(key: str) -> pd.DataFrame:
    """One row per stored head; built from the store's tables (no math)."""
    s = stores.reader(key)
    df = pd.DataFrame(stores.store_heads(s), columns=["layer", "head"])
    df.insert(0, "name", [head_name(l, h) for l, h in zip(df["layer"], df["head"], strict=True)])
    labels = tables.table(s, "head_labels")
    df = df.merge(
        labels[["layer", "head", "label", "labeller"]].drop_duplicates(["layer", "head"]),
        on=["layer", "head"],
        how="left",
    )
    ts = tables.table(s, "textspan")
    if not ts.empty:
        ts = ts.sort_values(["layer", "head", "rank"])
        top = (
            ts.groupby(["layer", "head"])
            .apply(
                lambda g: " · ".join(
                    f"{t} ({v:.3f})"
                    for t, v in zip(g["text"][:5], g["variance_removed"][:5], strict=True)
                ),
                include_groups=False,
            )
            .rename("top_texts (variance removed)")
        )
        df = df.merge(top.reset_index(), on=["layer", "head"], how="left")
    ref = paper.reference_labels(s)
    if ref:
        df["reference_label"] = [
            ref.get((l, h)) for l, h in zip(df["layer"], df["head"], strict=True)
        ]
    gt = tables.table(s, "ground_truth")
    if not gt.empty:
        dom = (
            gt[gt["is_dominant"]]
            .sort_values("eta2", ascending=False)
            .drop_duplicates(["layer", "head"])
        )
        dom = dom[["layer", "head", "factor", "eta2", "match"]].rename(
            columns={"factor": "gt_factor", "eta2": "gt_eta2", "match": "gt_match"}
        )
        df = df.merge(dom, on=["layer", "head"], how="left")
    # causal evidence: the accuracy this head alone carries for the task its label names
    eff = tables.table(s, "head_effects")
    if not eff.empty and "label" in df:
        own = df[["layer", "head", "label"]].merge(
            eff, left_on=["layer", "head", "label"], right_on=["layer", "head", "task"]
        )
        df = df.merge(
            own[["layer", "head", "drop"]].rename(columns={"drop": "ablation_drop_own_task"}),
            on=["layer", "head"], how="left",
        )  # fmt: skip
    seg = tables.table(s, "segmentation_scores")
    if not seg.empty:
        latest = seg[(seg["run_id"] == seg["run_id"].iloc[-1]) & (seg["scope"] == "head")]
        df = df.merge(
            latest[["layer", "head", "pointing", "miou"]].rename(
                columns={"pointing": "seg_pointing", "miou": "seg_miou"}
            ),
            on=["layer", "head"], how="left",
        )  # fmt: skip
    return df


df = heads_table(stores.version_key(store))
if df["label"].isna().all():
    st.info(
        f"Heads are not labelled yet: run `python -m engine interpret --store {ctx.store_path}`."
    )

c1, c2, c3 = st.columns([2, 1, 1])
search = c1.text_input("Search (any column)", key="heads_search", placeholder="e.g. colour")
layers = c2.multiselect("Layers", sorted(df.layer.unique()), key="heads_layers")
label_values = sorted(str(x) for x in df["label"].dropna().unique())
chosen_labels = c3.multiselect("Labels", label_values, key="heads_labels")
view = df
if layers:
    view = view[view.layer.isin(layers)]
if chosen_labels:
    view = view[view["label"].astype(str).isin(chosen_labels)]
if search:
    hit = view.astype(str).apply(lambda col: col.str.contains(search, case=False, regex=False))
    view = view[hit.any(axis=1)]
st.caption(f"{len(view)} of {len(df)} heads")
st.dataframe(view, hide_index=True, width="stretch")

d1, d2 = st.columns(2)
d1.download_button(
    "Download CSV", view.to_csv(index=False).encode(), "heads.csv", "text/csv", key="dl_csv"
)
buf = io.BytesIO()
view.to_parquet(buf, index=False)
d2.download_button(
    "Download Parquet",
    buf.getvalue(),
    "heads.parquet",
    "application/vnd.apache.parquet",
    key="dl_parquet",
)

st.subheader("Layer × head grid")
grid = df.assign(label=df["label"].fillna(charts.UNLABELLED))
tooltip = ["name", "label"] + [c for c in ("reference_label", "gt_factor") if c in grid]
chart = (
    alt.Chart(grid)
    .mark_rect(stroke="white")
    .encode(
        x=alt.X("head:O"),
        y=alt.Y("layer:O", sort="descending"),
        color=alt.Color(
            "label:N",
            scale=charts.label_scale(grid["label"]),  # mixed / unlabelled: neutral greys
            legend=alt.Legend(columns=2, title="label"),
        ),
        tooltip=tooltip,
    )
    .properties(height=max(120, 40 * df.layer.nunique()))
)
text = chart.mark_text(fontSize=9).encode(text="name:N", color=alt.value("black"))
st.altair_chart(chart + text, width="stretch")
