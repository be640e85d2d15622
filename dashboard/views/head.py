"""Head: the page of one head, `/head?store=NAME&unit=L7H3` — what it does on the store's images.

Reads only the precomputed tables (labels, TextSpan, unit summaries, examples with their maps,
histograms, visualisations, ground truth, ablation and segmentation records); the optional "on the
query image" section runs the model like the analysis pages do.
"""

from __future__ import annotations

import json

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import state, stores, tables, unit_page, widgets
from engine.core.layers import head_name
from engine.store import unit_tables

st.title("Head")
ctx = state.page_context()
store = widgets.require_store(ctx)
key = stores.version_key(store)
summ = unit_page.summary(key)
if summ.empty:
    st.info(
        "This store has no unit summaries yet: run "
        f"`python -m engine interpret --store {ctx.store_path}`."
    )
    st.stop()

all_units = [(int(l), int(h)) for l, h in zip(summ["layer"], summ["head"], strict=True)]
url_text = state.url_param("unit")
here = unit_page.parse_unit(url_text)
if url_text and here not in all_units:
    st.warning(
        f"{url_text!r} is not a head of this store (heads like "
        f"{head_name(*all_units[0])}…{head_name(*all_units[-1])}); showing "
        f"{head_name(*all_units[0])}."
    )
if here not in all_units:
    here = all_units[0]
prev_u, next_u = unit_page.neighbours(all_units, here)
nav = st.columns([1, 3, 1])
go = None
if nav[0].button(f"← {head_name(*prev_u)}", key="head_prev"):
    go = prev_u
picked = nav[1].selectbox(
    "Head",
    all_units,
    index=all_units.index(here),
    format_func=lambda u: head_name(*u),
    label_visibility="collapsed",
)  # fmt: skip  (no key: the URL is the state, the index follows it)
if picked != here:
    go = picked
if nav[2].button(f"{head_name(*next_u)} →", key="head_next"):
    go = next_u
if go is not None:
    state.set_url_param("unit", head_name(*go))
    st.rerun()
layer, head = here
name = head_name(layer, head)
state.set_url_param("unit", name)  # a copied URL reopens this head

row = summ.set_index(["layer", "head"]).loc[(layer, head)]
label, labeller = unit_tables.head_label(store.reader, layer, head)
label, labeller = label or "(unlabelled)", labeller or "—"
st.header(f"{name} · {label}", anchor=False)
st.caption(
    f"Labelled by **{labeller}**. Direction: the head's first principal direction over the "
    f"{int(row.n_images):,} stored images (sign: its mean contribution points along it). "
    f"Share of embedding variance: var(head's contribution) ÷ var(embedding), rank "
    f"{int((summ.variance_share > row.variance_share).sum()) + 1} of {len(summ)} heads; the "
    "embedding's variance is spread over every head, MLP and their covariances, so a labelled "
    "head can carry well under 1 % of it (docs/unit-pages.md)."
)

m = st.columns(4)
m[0].metric("Share of embedding variance", f"{row.variance_share:.2%}")
m[1].metric("Variance along its direction", f"{row.explained:.1%}")
effects = store.reader.table("head_effects")
own = effects[(effects.layer == layer) & (effects.head == head)]
if len(own):
    pick = own[own.task == label] if (own.task == label).any() else own
    best = pick.sort_values("drop", ascending=False).iloc[0]
    m[2].metric(f"Ablation drop ({best.task})", f"{best['drop']:+.3f}")
else:
    m[2].metric("Ablation drop", "not run")
seg = store.reader.table("segmentation_scores")
seg = seg[(seg.scope == "head") & (seg.layer == layer) & (seg["head"] == head)]
if len(seg):
    s = seg.iloc[-1]
    m[3].metric(f"Segmentation pointing ({s.text})", f"{s.pointing:.3f}")
else:
    m[3].metric("Segmentation", "not run")

left, right = st.columns([3, 2])
with left:
    st.subheader("TextSpan texts")
    ts = tables.textspan_texts(store, layer, head)
    if ts.empty:
        st.caption("none")
    else:
        st.dataframe(ts, hide_index=True, width="stretch")
    near = [json.loads(x) if isinstance(x, str) else None
            for x in (row.get("texts_along"), row.get("texts_against"))]  # fmt: skip
    if near[0]:
        st.markdown("**Bank texts nearest its direction**")
        st.dataframe(
            pd.DataFrame({"along (+)": near[0], "against (−)": near[1]}),
            hide_index=True, width="stretch",
        )  # fmt: skip
with right:
    gt = store.reader.table("ground_truth")
    gt = gt[(gt.layer == layer) & (gt["head"] == head)]
    if len(gt):
        st.subheader("Ground truth (η² per factor)")
        st.altair_chart(
            alt.Chart(gt[["factor", "eta2", "is_dominant"]])
            .mark_bar()
            .encode(x=alt.X("eta2:Q", scale=alt.Scale(domain=[0, 1])), y=alt.Y("factor:N"),
                    color=alt.Color("is_dominant:N", legend=None), tooltip=["factor", "eta2"])
            .properties(height=160),
            width="stretch",
        )  # fmt: skip
    st.subheader("Related heads")
    rel = unit_page.related_units(summ, (layer, head))
    st.dataframe(rel, hide_index=True, width="stretch")
    st.caption("|cosine| of first principal directions (their signs are a convention).")

ex = unit_page.examples(key, layer, head)
grid = int(store.info.get("grid") or 0)
maps = [m for m in map(unit_page.stored_map, ex["map"]) if m is not None]
vmax = max((float(np.abs(x).max()) for x in maps), default=1.0) or 1.0
st.subheader("Stored images along its direction")
st.caption(
    f"Each image's per-patch contribution along the direction over it (red +, blue −, one scale, "
    f"±{vmax:.3g}); captions: image # · projection. Maps: {row.maps}."
)
a, b = st.columns(2)
with a:
    unit_page.show_examples(store, ex[ex.side == "top"], "**Top** (most along)", grid, vmax)
with b:
    unit_page.show_examples(store, ex[ex.side == "bottom"], "**Bottom** (most against)", grid, vmax)

hist = unit_page.histograms(key, layer, head)
if len(hist):
    h1, h2 = st.columns(2)
    h1.altair_chart(unit_page.histogram_chart(hist, "norm", "contribution norm"), width="stretch")
    h2.altair_chart(
        unit_page.histogram_chart(hist, "projection", "projection on the direction"),
        width="stretch",
    )

vis = unit_page.visualisation(key, layer, head)
st.subheader("Synthesized image")
if vis.empty:
    st.caption(
        f"None stored: `python -m engine visualise --store {ctx.store_path} --units {name}`."
    )
else:
    v = vis.iloc[0]
    st.image(unit_page.png_image(v.image).resize((192, 192)), width=192)
    st.caption(
        f"Objective {v.objective:.3g} (random Fourier images {v.init_mean:.3g} ± {v.init_sd:.2g};"
        f" best stored image {v.store_max:.3g}); {v.method}."
    )

st.subheader("On the query image")
if st.toggle("Show this head on the image picked in the sidebar (runs the model)", key="head_q"):
    q = widgets.require_query(ctx)
    direction = np.asarray(row.direction, np.float32)  # [d_embed]
    all_maps = widgets.run("Computing per-patch maps…", store.maps, q, direction)
    grid_map = all_maps[store.layers.index(layer), head]  # [grid, grid]
    score = float(store.query_head_out(q, [(layer, head)])[0] @ direction)
    st.metric("Projection on the direction", f"{score:.4g}")
    widgets.show_heatmap(q, grid_map, f"along {name}", f"against {name}", q.label)
    st.caption(
        f"Stored images range from {pd.Series(ex.projection).min():.3g} to "
        f"{pd.Series(ex.projection).max():.3g} on this projection."
    )
