"""Altair charts shared by pages: label colours (``mixed`` neutral) and score bars where zero is
drawn as a value and a missing score as "no data"."""

from __future__ import annotations

import altair as alt
import pandas as pd

from engine.core.labels import MIXED, NON_LABELS

UNLABELLED = "(unlabelled)"
NEUTRAL = {MIXED: "#bdbdbd", UNLABELLED: "#f2f2f2", **{n: "#d9d9d9" for n in NON_LABELS}}
CATEGORY = (  # Tableau 10 without its grey, for labels that name a property
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
)  # fmt: skip


def label_scale(labels) -> alt.Scale:
    """Colours of head labels: each property a category colour; `mixed`, the non-labels and
    unlabelled heads neutral greys (they carry no single property)."""
    names = sorted({str(x) for x in labels})
    real = [n for n in names if n not in NEUTRAL]
    neutral = [n for n in names if n in NEUTRAL]
    domain = real + neutral
    colours = [CATEGORY[i % len(CATEGORY)] for i in range(len(real))]
    return alt.Scale(domain=domain, range=colours + [NEUTRAL[n] for n in neutral])


def with_missing(per_layer: pd.DataFrame, layers: list[int], metrics: list[str]) -> pd.DataFrame:
    """Every (layer, metric) of the stored layers, with `text`: the score ('0.00' for zero) or
    'no data' where nothing is stored."""
    grid = pd.DataFrame([(l, m) for l in layers for m in metrics], columns=["layer_from", "metric"])
    df = grid.merge(per_layer, on=["layer_from", "metric"], how="left")
    df["text"] = [("no data" if pd.isna(v) else f"{v:.2f}") for v in df["value"]]
    df["shown"] = df["value"].fillna(0.0)
    return df


def per_layer_chart(per_layer: pd.DataFrame, layers: list[int]) -> alt.LayerChart:
    """Bars per (layer, metric) with the value written on each: a zero score reads '0.00', a
    layer without a score 'no data' (not an empty slot)."""
    metrics = sorted(per_layer["metric"].unique())
    df = with_missing(per_layer, layers, metrics)
    base = alt.Chart(df).encode(
        x=alt.X("layer_from:O", title="layer"),
        xOffset="metric:N",
        tooltip=["metric", "layer_from", "count", "total", "text"],
    )
    bars = base.mark_bar().encode(
        y=alt.Y("shown:Q", title="score", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("metric:N"),
    )
    text = base.mark_text(dy=-6, fontSize=10).encode(
        y="shown:Q", text="text:N", color=alt.value("#333")
    )
    return alt.layer(bars, text).properties(height=260)
