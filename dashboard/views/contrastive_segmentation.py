"""Contrastive segmentation: where the image is more one text than another (direction t1 - t2)."""

from __future__ import annotations

import streamlit as st

from dashboard import state, unit_page, widgets

st.title("Contrastive segmentation")
ctx = state.page_context()
store = widgets.require_store(ctx)
q = widgets.require_query(ctx)

c1, c2 = st.columns(2)
t1 = c1.text_input("Text 1 (map: red, +)", value="a blue shape", key="contrast_t1").strip()
t2 = c2.text_input("Text 2 (map: blue, −)", value="a red shape", key="contrast_t2").strip()
mask = widgets.head_mask_picker(store, key="contrast")
if not t1 or not t2:
    st.warning("Type both texts.")
    st.stop()
if mask is None:
    st.stop()

grid_map = widgets.run(  # [grid, grid]: direction text 1 - text 2, chosen heads summed
    "Decomposing the image…", store.contrastive_segmentation, q, t1, t2, heads=mask
)
widgets.show_heatmap(
    q,
    grid_map,
    high=f"more “{t1}”",
    low=f"more “{t2}”",
    note=f"{int(mask.sum())} head(s) summed · direction = text 1 − text 2",
)
unit_page.mask_links(ctx, store, mask)
