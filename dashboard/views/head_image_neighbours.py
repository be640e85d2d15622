"""Head image neighbours: per chosen head, the stored images whose contribution of that head is
most similar (cosine) to the image's."""

from __future__ import annotations

import streamlit as st

from dashboard import state, unit_page, widgets
from engine.core.layers import head_name

st.title("Head image neighbours")
ctx = state.page_context()
store = widgets.require_store(ctx)
q = widgets.require_query(ctx)

labels = store.head_labels()
all_heads = store.heads()
c1, c2 = st.columns([3, 1])
with c1:
    heads = widgets.head_picker(
        store,
        "Heads (side by side)",
        key="hin_heads",
        default=all_heads[-3:],
        labels=labels,
        max_selections=6,
    )
k = c2.slider("Neighbours per head", 1, 16, 8, key="hin_k")
if not heads:
    st.warning("Choose at least one head.")
    st.stop()

rankings = widgets.run("Ranking…", store.head_image_neighbours, q, heads, k=k)

st.image(q.crop(128), caption=q.label, width=128)
cols = st.columns(len(heads))
for col, hd, ranking in zip(cols, heads, rankings, strict=True):
    with col:
        name = head_name(*hd)
        st.markdown(f"**{name}**" + (f"  \n{labels[hd]}" if hd in labels else ""))
        unit_page.unit_link(ctx, *hd, f"{name}'s page")
        widgets.show_thumbs(store, ranking)
