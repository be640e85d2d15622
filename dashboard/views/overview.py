"""Overview: entanglement and association scores, per layer, across stores, beside the paper."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import charts, paper, state, stores, widgets

st.title("Overview")
ctx = state.page_context()
store = widgets.require_store(ctx)
scores = store.reader.table("scores")
st.caption(
    "**association**: share of heads with at least 3 of their top-5 TextSpan texts in their "
    "label's category (higher = heads more consistent). **entanglement_shared**: share of heads "
    "whose label another head also has (the paper's wording). **entanglement_unique**: share of "
    "heads whose label no other head has — the variant that reproduces the paper's Table 1 from "
    "its published labels. Heads labelled `mixed` count in the total only."
)
# the paper's Table 1 "entanglement" is compared with entanglement_unique (see engine/core/scores.py)
PAPER_METRIC = {"entanglement_unique": "entanglement", "association": "association"}


def overall(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (metric, labeller): the layer-range score (else the widest layer span)."""
    if df.empty:
        return df
    if (df["scope"] == "range").any():
        df = df[df["scope"] == "range"]
    df = df.assign(span=df["layer_to"] - df["layer_from"])
    return df.sort_values("span").groupby(["metric", "labeller"], as_index=False).last()


if scores.empty:
    st.warning(
        "This store has no scores yet. Run "
        f"`python -m engine interpret --store {ctx.store_path}` to label heads and "
        "score them."
    )
else:
    top = overall(scores)
    cols = st.columns(max(1, len(top)))
    published = paper.PAPER_SCORES.set_index("model_spec")
    spec = store.model_record.model_spec
    for col, row in zip(cols, top.itertuples(), strict=False):
        label = f"{row.metric} ({row.labeller})"
        delta = None
        if paper.paper_model(store) is not None and row.metric in PAPER_METRIC:
            delta = f"paper: {published.loc[spec, PAPER_METRIC[row.metric]]:.3f}"
        col.metric(
            label,
            f"{row.value:.3f}",
            delta=delta,
            delta_color="off",
            help=f"{row.count} of {row.total} heads, layers {row.layer_from}–{row.layer_to}",
        )

    st.subheader("Per layer")
    per_layer = scores[scores["scope"] == "layer"]
    if per_layer.empty:
        st.info("No per-layer breakdown stored.")
    else:
        chart = charts.per_layer_chart(per_layer, store.layers)
        st.altair_chart(chart, width="stretch")
        st.dataframe(per_layer.drop(columns=["run_id"]), hide_index=True)

st.subheader("All stores and the paper")
rows = []
for path in stores.list_store_paths():
    try:
        other = stores.open_store(path)
    except Exception:
        continue
    o = overall(other.reader.table("scores"))
    name = f"{path.rsplit('/', 1)[-1]} ({other.model_record.model_spec})"
    if o.empty:  # not interpreted: a row that says so, not an empty slot
        rows += [{"model": name, "metric": m, "value": None, "source": "computed (store)"}
                 for m in PAPER_METRIC]  # fmt: skip
    for r in o.itertuples():
        rows.append(
            {
                "model": f"{path.rsplit('/', 1)[-1]} ({other.model_record.model_spec})",
                "metric": r.metric,
                "value": r.value,
                "source": "computed (store)",
            }
        )
for r in paper.PAPER_SCORES.itertuples():
    for metric, paper_name in PAPER_METRIC.items():
        rows.append(
            {
                "model": r.model,
                "metric": metric,
                "value": getattr(r, paper_name),
                "source": "paper (published)",
            }
        )
cmp = pd.DataFrame(rows)
cmp = cmp[cmp["metric"].isin(list(PAPER_METRIC))]  # the metrics the paper reports
cmp["text"] = [("no data" if pd.isna(v) else f"{v:.3f}") for v in cmp["value"]]
cmp["shown"] = cmp["value"].fillna(0.0)
base = alt.Chart(cmp).encode(
    y=alt.Y("model:N", title=None, sort=None),
    x=alt.X("shown:Q", title="score", scale=alt.Scale(domain=[0, 1])),
    tooltip=["model", "metric", "source", "text"],
)
bars = base.mark_bar().encode(color=alt.Color("source:N", legend=alt.Legend(orient="bottom")))
values = base.mark_text(align="left", dx=3, fontSize=10).encode(text="text:N")  # 0 vs no data
chart = (
    alt.layer(bars, values, data=cmp)
    .properties(width=260)
    .facet(column=alt.Column("metric:N", title=None, sort=list(PAPER_METRIC)))
)
st.altair_chart(chart)
st.caption(
    "Paper figures: Tables 1 (entanglement, shown as entanglement_unique) and 2 (association) "
    "of Madasu et al., last four layers of each model, counts of 48 (ViT-B) or 64 (ViT-L) heads. "
    "Stores: their layer-range score."
)
