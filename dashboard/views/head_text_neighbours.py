"""Head text neighbours: the stored images one head ranks highest for a text
(score = head_out · text embedding, the head's direct share of the image-text logit)."""

from __future__ import annotations

import streamlit as st

from dashboard import state, tables, unit_page, widgets
from engine.core.layers import head_name

st.title("Head text neighbours")
ctx = state.page_context()
store = widgets.require_store(ctx)

labels = store.head_labels()
all_heads = store.heads()
c1, c2 = st.columns([3, 1])
head = c1.selectbox(
    "Head",
    all_heads,
    index=len(all_heads) - 1,
    key="htn_head",
    format_func=lambda x: head_name(*x) + (f" · {labels[x]}" if x in labels else ""),
)
k = c2.slider("Neighbours", 1, 32, 8, key="htn_k")
texts = tables.textspan_texts(store, *head)
sources = (["TextSpan text"] if not texts.empty else []) + ["Typed text"]
source = st.radio("Text", sources, key="htn_source", horizontal=True)
if source == "TextSpan text":
    text = st.selectbox(
        "TextSpan texts of this head (variance removed)",
        list(texts["text"]),
        key="htn_ts",
        format_func=lambda t: (
            f"{t} ({float(texts.set_index('text').loc[t, 'variance_removed']):.3f})"
        ),  # noqa: E501
    )
else:
    text = st.text_input("Text", value="a red shape", key="htn_typed").strip()
if not text:
    st.warning("Type a text.")
    st.stop()

ranking = widgets.run("Ranking…", store.head_text_neighbours, head, text, k=k)
st.markdown(f"**{head_name(*head)}** · “{text}” · score = head_out · text")
unit_page.unit_link(ctx, *head, f"{head_name(*head)}'s page")
widgets.show_thumbs(store, ranking)
