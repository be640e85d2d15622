"""Neurons: the store's MLP neurons through the second-order lens, `/neurons?store=NAME`.

A table of the described neurons (significance, words, label) searchable by text — a row opens
that neuron's unit page (`/head?unit=L6N12`, the same page as a head's: `views/head.py`) — and
neuron-based segmentation of the query image. Computation lives in `engine.session.neurons`;
this page gathers choices and renders. An older link `/neurons?unit=L6N12` offers that page.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import state, unit_page, widgets
from engine.errors import UserError

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
    "description of its principal direction. Pick a row to open the neuron's page."
)
asked = unit_page.parse_unit(state.url_param("unit"))
if asked is not None and asked.kind == "neuron":  # an older per-neuron URL: its page is the unit's
    unit_page.named_link(ctx, asked.name, f"{asked.name}'s page")
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
picked = unit_page.clicked_unit(event, shown)
if picked is not None:
    unit_page.open_unit_named(ctx, picked)

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
    st.markdown(unit_page.names_markdown(ctx, list(used.unit)))
