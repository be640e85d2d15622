"""Topic segmentation: where in the image chosen heads push the embedding toward a text."""

from __future__ import annotations

import streamlit as st

from dashboard import model_cache, state, widgets
from engine.core import analysis

st.title("Topic segmentation")
ctx = state.page_context()
store = widgets.require_store(ctx)
q = widgets.require_query(ctx)

text = st.text_input("Text", value="a blue shape", key="topic_text")
mask = widgets.head_mask_picker(store, key="topic")
if not text.strip():
    st.warning("Type a text.")
    st.stop()
if mask is None:
    st.stop()

direction = model_cache.text_embedding(store, [text.strip()])[0]  # [d_embed]
maps = model_cache.maps_for(store, q, direction)  # [layer, head, grid, grid]
grid_map = analysis.aggregate_maps(maps, mask)
n = int(mask.sum())
widgets.show_heatmap(
    q,
    grid_map,
    high=f"toward “{text}”",
    low=f"away from “{text}”",
    note=f"{n} head(s) summed · map of contribution · text per patch",
)
