"""Heads: every stored (layer, head) with its label, TextSpan texts, reference and ground truth."""

from __future__ import annotations

import io

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import charts, paper, state, stores, unit_page, widgets

st.title("Heads")
ctx = state.page_context()
store = widgets.require_store(ctx)


@st.cache_data(show_spinner=False, max_entries=8)
def heads_table(key: str) -> pd.DataFrame:
    """The session's one table of heads (label, TextSpan texts, evidence), with the TextSpan
    texts written out and the paper demo's reference labels where the model is a paper's."""
    s = stores.session(key)
    df = s.heads_table()
    texts = df.pop("top_texts")
    if any(len(t) for t in texts):  # interpreted: "text (variance removed) · …"
        df.insert(
            df.columns.get_loc("labeller") + 1,
            "top_texts (variance removed)",
            [" · ".join(f"{t} ({v:.3f})" for t, v in ts) or None for ts in texts],
        )
    ref = paper.reference_labels(s)
    if ref:
        df["reference_label"] = [
            ref.get((l, h)) for l, h in zip(df["layer"], df["head"], strict=True)
        ]
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
table_event = st.dataframe(
    view,
    hide_index=True,
    width="stretch",
    on_select="rerun",
    selection_mode="single-row",
    key="heads_table",
)  # fmt: skip  (a row click opens that head's page)
unit_page.open_clicked(ctx, unit_page.clicked_row(table_event, view))

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
cell = alt.selection_point(name="cell", fields=["layer", "head"])
grid_event = st.altair_chart(
    chart.add_params(cell) + text, width="stretch", on_select="rerun", key="heads_grid"
)  # a cell click opens that head's page
unit_page.open_clicked(ctx, unit_page.clicked_cell(grid_event, "cell"))
st.caption("Click a row of the table or a cell of the grid to open that head's page.")
