"""Property neighbours: the heads carrying one property, combined; the store's nearest images."""

from __future__ import annotations

import streamlit as st

from dashboard import head_cache, model_cache, paper, state, stores, tables, widgets
from engine.core import analysis
from engine.core.labels import MIXED, NON_LABELS
from engine.core.layers import head_name

st.title("Property neighbours")
ctx = state.page_context()
store = widgets.require_store(ctx)
q = widgets.require_query(ctx)

# property -> heads: the store's own labels, else the demo's ground truth, plus the paper's lists
labels = tables.head_labels(store)
stored = set(stores.store_heads(store))
properties: dict[str, list[tuple[int, int]]] = {}
for hd, lab in labels.items():
    if lab not in (MIXED, *NON_LABELS):  # "mixed" heads carry no single property
        properties.setdefault(f"{lab} (label)", []).append(hd)
if not properties:
    gt = tables.table(store, "ground_truth")
    if not gt.empty:
        for r in gt[gt["is_dominant"]].itertuples():
            properties.setdefault(f"{r.factor} (ground truth)", []).append(
                (int(r.layer), int(r.head))
            )
for prop, heads in paper.reference_properties(store).items():
    heads = [h for h in heads if h in stored]
    if heads:
        properties[f"{prop} (paper demo)"] = heads
if not properties:
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

banks = head_cache.many_head_contributions(store, heads)
query_out = model_cache.query_head_out(store, q, heads)  # [head, d_embed]
scores = analysis.property_scores(query_out, banks, combine)
exclude = [q.store_index] if q.store_index is not None else []
ranking = analysis.top_k(scores, k, exclude)

st.markdown(
    f"**{len(heads)} head(s)** {', '.join(head_name(*h) for h in heads)} · combined by "
    f"**{combine}** of unit-normalised contributions · cosine over "
    f"{store.info['n_images']:,} stored images"
)
left, right = st.columns([1, 3])
left.image(q.crop(192), caption=q.label, width=192)
with right:
    widgets.show_thumbs(store, ranking)
