"""Topic segmentation: where in the image chosen heads push the embedding toward a text."""

from __future__ import annotations

import streamlit as st

from dashboard import state, unit_page, widgets

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

grid_map = widgets.run(  # [grid, grid]: the chosen heads' maps, summed
    "Decomposing the image…", store.topic_segmentation, q, text.strip(), heads=mask
)
n = int(mask.sum())
widgets.show_heatmap(
    q,
    grid_map,
    high=f"toward “{text}”",
    low=f"away from “{text}”",
    note=f"{n} head(s) summed · map of contribution · text per patch",
)
unit_page.mask_links(ctx, store, mask)
