"""Neurons: the store's MLP neurons through the second-order lens, `/neurons?store=NAME&unit=L5N12`.

A table of the described neurons (significance, words, label) searchable by text, and one neuron's
page: its top stored images, its words with their weights, its recorded ablations (`ablate`) and
its per-patch map on the query image. Computation lives in `engine.session.neurons`; this page gathers choices and renders.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import state, stored, widgets
from engine.errors import UserError
from engine.session.neurons import neuron_name, parse_neuron

st.title("Neurons")
ctx = state.page_context()
store = widgets.require_store(ctx)
try:
    table = store.neuron_table()
except UserError as e:
    st.info(str(e))
    st.stop()

st.caption(
    "Each MLP neuron's **second-order effect**: what it writes, carried by the later layers' "
    "heads to the image embedding (docs/decomposition.md). Significance: its mean centred effect "
    "norm over the store's images (what mean-ablation removes); words: a sparse (OMP) text "
    "description of its principal direction."
)
text = st.text_input("Search neurons by text", key="neurons_text", placeholder="e.g. a red shape")
if text.strip():
    shown = widgets.run("Searching…", store.search_neurons, text, k=25)
    st.caption(f"The 25 neurons whose direction is nearest {text!r} (cosine with its embedding).")
else:
    shown = table
cols = [c for c in ("unit", "layer", "neuron", "cosine", "significance", "label", "words")
        if c in shown.columns]  # fmt: skip
event = st.dataframe(
    shown[cols], hide_index=True, width="stretch", height=280, on_select="rerun",
    selection_mode="single-row", key="neurons_table",
)  # fmt: skip
rows = list(getattr(getattr(event, "selection", None), "rows", None) or [])
if rows and rows[0] < len(shown):
    r = shown.iloc[int(rows[0])]
    state.set_url_param("unit", neuron_name(r.layer, r.neuron))

units = [(int(l), int(n)) for l, n in zip(table.layer, table.neuron, strict=True)]
url_text = state.url_param("unit")
here = parse_neuron(url_text) if url_text else None
if url_text and here not in set(units):
    st.warning(
        f"{url_text!r} is not a described neuron of this store; showing the most significant."
    )
if here is None or here not in set(units):
    here = units[0]
layer, neuron = here
name = neuron_name(layer, neuron)
state.set_url_param("unit", name)  # a copied URL reopens this neuron

facts = store.neuron_facts(layer, neuron)
st.header(f"{name} · {facts.label}", anchor=False)
m = st.columns(3)
m[0].metric("Significance (mean centred norm)", f"{facts.significance:.4g}")
m[1].metric("Top-image threshold", f"{facts.threshold:.4g}")
m[2].metric("Largest effect norm", f"{facts.top_norm:.4g}")

left, right = st.columns([2, 3])
with left:
    st.subheader("Words")
    if facts.words.empty:
        st.caption("none")
    else:
        st.dataframe(facts.words, hide_index=True, width="stretch", height=260)
with right:
    st.subheader("Top stored images")
    ids = facts.top_images[:12]
    if ids:
        st.image(list(stored.thumbnails(store, ids)), caption=[f"#{i}" for i in ids], width=96)
    else:
        st.caption("none")

st.subheader("Recorded ablations")
drops = store.neuron_ablation_drops(layer, neuron)  # engine.store.neuron_ablations
if drops.empty:
    st.caption(
        f"No recorded ablation removed {name}: `python -m engine ablate --store {ctx.store_path} "
        f"--ablate {name}` records its own accuracy drop (the Ablation page shows such runs "
        "without recording them)."
    )
else:
    cols = ["spec", "n_ablated", "task", "before", "after", "drop", "random_mean", "finished_at"]
    st.dataframe(
        drops[cols], hide_index=True, width="stretch", height=220,
        column_config={c: st.column_config.NumberColumn(format="%.3f")
                       for c in ("before", "after", "drop", "random_mean")},
    )  # fmt: skip
    st.caption(
        "Every recorded `ablate` run that removed this neuron, the latest first: its own drop where "
        "it was ablated alone (n_ablated 1), else the drop of the set it was in; random_mean: as "
        "many random neurons of the layer ablated instead."
    )

st.subheader("On the query image")
if st.toggle("Map this neuron on the image picked in the sidebar (runs the model)", key="neuron_q"):
    q = widgets.require_query(ctx)
    nmap = widgets.run("Computing the neuron's map…", store.neuron_map, q, layer, neuron)
    c = st.columns(2)
    c[0].metric("Effect along its direction", f"{nmap.total:.4g}")
    c[1].metric("Effect norm", f"{nmap.norm:.4g}")
    widgets.show_heatmap(q, np.asarray(nmap.patches), f"along {name}", f"against {name}", q.label)
    st.caption(
        f"Per-patch shares of the effect along its direction (the class token's: {nmap.cls:.3g}); "
        f"stored images are significant above {facts.threshold:.3g} (centred norm)."
    )

st.subheader("Neuron segmentation")
seg_text = st.text_input(
    "Segment the image picked in the sidebar by the 10 neurons nearest a text (runs the model)",
    key="neurons_seg",
    placeholder="e.g. a red shape",
)
if seg_text.strip():
    q = widgets.require_query(ctx)
    seg, used = widgets.run("Segmenting…", store.neuron_segmentation, q, seg_text, k=10)
    widgets.show_heatmap(q, np.asarray(seg), f"more {seg_text!r}", f"less {seg_text!r}", q.label)
    st.caption(
        "The mean of their per-patch maps along the text's embedding; neurons: "
        + ", ".join(used.unit)
    )
