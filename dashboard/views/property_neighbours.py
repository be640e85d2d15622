"""Property neighbours: the heads carrying one property, combined; the store's nearest images."""

from __future__ import annotations

import streamlit as st

from dashboard import paper, state, tables, widgets
from engine.core import analysis
from engine.core.layers import head_name

st.title("Property neighbours")
ctx = state.page_context()
store = widgets.require_store(ctx)
q = widgets.require_query(ctx)

# property -> heads: the store's own labels, else the demo's ground truth, plus the paper's lists
labels = store.head_labels()
stored = set(store.heads())
properties = store.property_heads()
for prop, heads in paper.reference_properties(store).items():
    heads = [h for h in heads if h in stored]
    if heads:
        properties[f"{prop} (paper demo)"] = heads
if not properties and tables.interpreted(store):
    st.info(
        "All heads are `mixed` (no property heads): interpretation found no head carrying one "
        "property, as usual at random init or on few images. Choose the heads by hand."
    )
elif not properties:
    st.info("No head labels yet (run `python -m engine interpret`): choose the heads by hand.")

c1, c2, c3 = st.columns([2, 1, 1])
prop = c1.selectbox("Property", sorted(properties), key="prop_name") if properties else None
combine = c2.radio(
    "Combine heads",
    list(analysis.COMBINE_MODES),
    key="prop_combine",
    horizontal=True,
    help="concat: concatenate each head's unit-normalised contribution (= mean of per-head "
    "cosines, every head weighs the same). sum: add the unit-normalised contributions, then "
    "cosine.",
)
k = c3.slider("Neighbours", 1, 16, 8, key="prop_k")
heads = widgets.head_picker(
    store,
    "Heads combined",
    key=f"prop_heads_{prop}",
    default=properties.get(prop) if prop else None,
    labels=labels,
)
if not heads:
    st.warning("Choose at least one head.")
    st.stop()

ranking = widgets.run("Ranking…", store.property_neighbours, q, heads, combine=combine, k=k)

st.markdown(
    f"**{len(heads)} head(s)** {', '.join(head_name(*h) for h in heads)} · combined by "
    f"**{combine}** of unit-normalised contributions · cosine over "
    f"{store.n_images:,} stored images"
)
left, right = st.columns([1, 3])
left.image(q.crop(192), caption=q.label, width=192)
with right:
    widgets.show_thumbs(store, ranking)
