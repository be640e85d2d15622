"""Unit: the page of one head or MLP neuron, `/head?store=NAME&unit=L7H3` or `unit=L6N12` — what
it does on the store's images. One page for both kinds (`dashboard.unit_page` gathers each kind's
facts into the same shapes).

Reads only the precomputed tables (labels, TextSpan or neuron words, unit summaries, examples with
their maps, histograms, visualisations, ground truth, ablation and segmentation records); the
optional "on the query image" section runs the model like the analysis pages do.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import state, stores, unit_page, widgets

ctx = state.page_context()
url_text = state.url_param("unit")
asked = unit_page.parse_unit(url_text)
st.title("Neuron" if asked is not None and asked.kind == "neuron" else "Head")
store = widgets.require_store(ctx)
key = stores.version_key(store)
summ = unit_page.summary(key)
if summ.empty:
    st.info(
        "This store has no unit summaries yet: run "
        f"`python -m engine interpret --store {ctx.store_path}` (heads) or "
        f"`python -m engine interpret --store {ctx.store_path} --neurons all` (neurons)."
    )
    st.stop()

names = summ["unit"].tolist()
if url_text and (asked is None or asked.name not in names):
    kind = "neuron" if asked is not None and asked.kind == "neuron" else "head"
    same = [n for n, k in zip(names, summ["kind"], strict=True) if k == kind]
    if same:
        st.warning(
            f"{url_text!r} is not a {kind} of this store ({kind}s like {same[0]}…{same[-1]}); "
            f"showing {same[0]}."
        )
    else:
        same = names
        st.warning(
            f"{url_text!r}: this store has no {kind} pages yet (for neurons: `python -m engine "
            f"interpret --store {ctx.store_path} --neurons all`); showing {same[0]}."
        )
    here = same[0]
else:
    here = asked.name if asked is not None else names[0]
row = summ.iloc[names.index(here)]
kin = [n for n, k in zip(names, summ["kind"], strict=True) if k == row.kind]
prev_u, next_u = unit_page.neighbours(kin, here)  # previous / next unit of the same kind
nav = st.columns([1, 3, 1])
go = None
if nav[0].button(f"← {prev_u}", key="head_prev"):
    go = prev_u
picked = nav[1].selectbox("Unit", names, index=names.index(here), label_visibility="collapsed")
if picked != here:  # (no key: the URL is the state, the index follows it)
    go = picked
if nav[2].button(f"{next_u} →", key="head_next"):
    go = next_u
if go is not None:
    state.set_url_param("unit", go)
    st.rerun()
state.set_url_param("unit", here)  # a copied URL reopens this unit

facts = unit_page.safe_facts(store, row)
if isinstance(facts, str):
    st.info(facts)
    st.stop()
st.header(f"{here} · {facts.label}", anchor=False)
st.caption(
    f"Labelled by **{facts.labeller}**. {facts.caption} " + unit_page.variance_note(summ, row)
)
m = st.columns(len(facts.metrics))
for col, (label, value) in zip(m, facts.metrics, strict=True):
    col.metric(label, value)

left, right = st.columns([3, 2])
with left:
    title, texts = facts.texts
    st.subheader(title)
    if texts is None or texts.empty:
        st.caption("none")
    else:
        st.dataframe(texts, hide_index=True, width="stretch")
    along, against = unit_page.nearest_texts(row)
    if along:
        st.markdown("**Bank texts nearest its direction**")
        st.dataframe(pd.DataFrame({"along (+)": along, "against (−)": against}),
                     hide_index=True, width="stretch")  # fmt: skip
with right:
    gt = facts.ground_truth
    if gt is not None and len(gt):
        st.subheader("Ground truth (η² per factor)")
        st.altair_chart(
            alt.Chart(gt)
            .mark_bar()
            .encode(x=alt.X("eta2:Q", scale=alt.Scale(domain=[0, 1])), y=alt.Y("factor:N"),
                    color=alt.Color("is_dominant:N", legend=None), tooltip=["factor", "eta2"])
            .properties(height=160),
            width="stretch",
        )  # fmt: skip
    st.subheader("Related units")
    st.dataframe(unit_page.related_units(summ, here), hide_index=True, width="stretch")
    st.caption("Heads and neurons by |cosine| of principal directions (signs are a convention).")

ex = unit_page.examples(key, here)
grid = int(store.info.get("grid") or 0)
vmax = unit_page.map_scale(ex)
st.subheader("Stored images along its direction")
st.caption(
    f"Each image's per-patch {facts.what} along the direction over it (red +, blue −, one "
    f"scale, ±{vmax:.3g}); captions: image # · projection. Maps: {row.maps}."
    + unit_page.examples_note(row)
)
a, b = st.columns(2)
with a:
    unit_page.show_examples(store, ex[ex.side == "top"], "**Top** (most along)", grid, vmax)
with b:
    unit_page.show_examples(store, ex[ex.side == "bottom"], "**Bottom** (most against)", grid, vmax)

hist = unit_page.histograms(key, here)
if len(hist):
    norm_title = "contribution norm" if row.kind == "head" else "centred effect norm (all images)"
    proj_title = ("projection on the direction" if row.kind == "head"
                  else f"projection on the direction ({int(row.proj_images)} most affected)")  # fmt: skip
    h1, h2 = st.columns(2)
    h1.altair_chart(unit_page.histogram_chart(hist, "norm", norm_title), width="stretch")
    h2.altair_chart(unit_page.histogram_chart(hist, "projection", proj_title), width="stretch")

vis = unit_page.visualisation(key, here)
st.subheader("Synthesized image")
if vis.empty:
    st.caption(
        f"None stored: `python -m engine visualise --store {ctx.store_path} --units {here}`."
    )
else:
    v = vis.iloc[0]
    st.image(unit_page.png_image(v.image).resize((192, 192)), width=192)
    st.caption(
        f"Objective {v.objective:.3g} (random Fourier images {v.init_mean:.3g} ± {v.init_sd:.2g};"
        f" best stored image {v.store_max:.3g}); {v.method}."
    )

if row.kind == "neuron":
    unit_page.neuron_ablations(ctx, store, here, int(row.layer), int(row.neuron))

st.subheader("On the query image")
toggle_key = "head_q" if row.kind == "head" else "neuron_q"
if st.toggle(f"Show this {row.kind} on the image picked in the sidebar (runs the model)",
             key=toggle_key):  # fmt: skip
    q = widgets.require_query(ctx)
    grid_map, score, norm = widgets.run("Computing the per-patch map…", unit_page.query_map,
                                        store, q, row)  # fmt: skip
    c = st.columns(2)
    c[0].metric("Projection on the direction", f"{score:.4g}")
    if norm is not None:
        c[1].metric("Effect norm", f"{norm:.4g}")
    widgets.show_heatmap(q, grid_map, f"along {here}", f"against {here}", q.label)
    st.caption(
        f"Stored images range from {pd.Series(ex.projection).min():.3g} to "
        f"{pd.Series(ex.projection).max():.3g} on this projection."
    )
