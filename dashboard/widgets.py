"""Dashboard widgets shared by the pages: head pickers, thumbnail strips, heatmaps.

Rendering only: values come from the store session (`stores`, `tables`, `stored`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboard import render, settings, stored
from dashboard.query import QueryImage
from engine.core import analysis
from engine.core.layers import head_name
from engine.errors import UserError


def head_picker(
    store,
    label: str,
    key: str,
    default: list[tuple[int, int]] | None = None,
    labels: dict[tuple[int, int], str] | None = None,
    max_selections=None,
):
    """Multiselect of (layer, head) pairs shown as L{l}H{h} (+ label)."""
    heads = store.heads()
    labels = labels or {}

    def fmt(x: tuple[int, int]) -> str:
        name = head_name(*x)
        return f"{name} · {labels[x]}" if x in labels else name

    return st.multiselect(
        label,
        heads,
        default=default or heads[:1],
        format_func=fmt,
        key=key,
        max_selections=max_selections,
    )


def show_thumbs(store, ranking: analysis.Ranking, caption_fmt: str = "{:.3f}") -> None:
    """Stored thumbnails (96 px, wrapping), best first, captioned '#image_id · score · name ·
    class' (or the demo world's factors)."""
    if len(ranking.index) == 0:
        st.warning("No stored images to rank.")
        return
    thumbs = stored.thumbnails(store, ranking.index)
    names = stored.captions(store, ranking.index)
    st.image(
        [Image.fromarray(t) for t in thumbs],
        caption=[
            f"#{i} · {caption_fmt.format(s)} · {n}"
            for i, s, n in zip(ranking.index, ranking.score, names, strict=True)
        ],
        width=96,
    )


# ------------------------------------------------------------------------ heatmap rendering


def show_heatmap(q: QueryImage, grid_map: np.ndarray, high: str, low: str, note: str) -> None:
    """The map over the model's crop of the image, its legend, and the grid values."""
    import altair as alt

    vmax = analysis.symmetric_scale(grid_map)
    overlay = render.heat_overlay(q.crop(), grid_map, vmax)
    left, right = st.columns([3, 2])
    with left:
        st.image(overlay, caption=note, width=settings.DISPLAY_SIZE)
        st.image(
            render.colour_bar(vmax, width=settings.DISPLAY_SIZE, height=14),
            width=settings.DISPLAY_SIZE,
        )
        st.markdown(
            f"<div style='display:flex;justify-content:space-between;width:{settings.DISPLAY_SIZE}px;"
            f"font-size:0.8em'><span>−{vmax:.3g} · {low}</span><span>0</span>"
            f"<span>+{vmax:.3g} · {high}</span></div>",
            unsafe_allow_html=True,
        )
        st.caption(
            "Colour scale: blue (−) → white (0) → red (+), symmetric around 0; opacity grows "
            "with |value|. Cells outlined in yellow/black mark the peaks of high similarity: "
            "the top 10% of cells that reach at least half the maximum."
        )
    with right:
        n = grid_map.shape[0]
        cells = pd.DataFrame(
            [(r, c, float(grid_map[r, c])) for r in range(n) for c in range(n)],
            columns=["row", "col", "value"],
        )
        chart = (
            alt.Chart(cells)
            .mark_rect()
            .encode(
                x=alt.X("col:O", title="patch column"),
                y=alt.Y("row:O", title="patch row"),
                color=alt.Color(
                    "value:Q",
                    scale=alt.Scale(domain=[-vmax, 0, vmax], range=render.HEAT_RANGE),
                    legend=alt.Legend(title=f"red: {high}"[:40]),
                ),
                tooltip=["row", "col", alt.Tooltip("value:Q", format=".4f")],
            )
            .properties(width=260, height=260, title="Per-patch values")
        )
        st.altair_chart(chart)
        st.caption(f"Sum over patches: {float(grid_map.sum()):+.4f}")


def head_mask_picker(store, key: str) -> np.ndarray | None:
    """One head, or an aggregate over chosen layers × heads -> bool mask [layer, head] over the
    stored layers (None, with a message, when nothing is chosen)."""
    layers = store.layers
    n_heads = store.n_heads
    labels = store.head_labels()
    mode = st.radio(
        "Heads",
        ["One head", "Aggregate"],
        index=1,  # by default the whole model's view: every stored head summed
        key=f"{key}_mode",
        horizontal=True,
        help="Aggregate: the sum of the per-head maps of every chosen head.",
    )
    mask = np.zeros((len(layers), n_heads), dtype=bool)
    if mode == "One head":
        heads = store.heads()
        l, h = st.selectbox(
            "Head",
            heads,
            index=len(heads) - 1,
            key=f"{key}_head",
            format_func=lambda x: head_name(*x) + (f" · {labels[x]}" if x in labels else ""),
        )
        mask[layers.index(l), h] = True
        return mask
    c1, c2 = st.columns(2)
    chosen_layers = c1.multiselect("Layers", layers, default=layers, key=f"{key}_layers")
    chosen_heads = c2.multiselect(
        "Heads of each layer",
        list(range(n_heads)),
        default=list(range(n_heads)),
        key=f"{key}_heads",
    )
    if not chosen_layers or not chosen_heads:
        st.warning("Choose at least one layer and one head.")
        return None
    for l in chosen_layers:
        mask[layers.index(l), chosen_heads] = True
    return mask


# ------------------------------------------------------------------------- page preconditions


def require_store(ctx):
    """The open store, or stop the page saying where to pick one."""
    if ctx.store is None:
        st.info(
            "No store is open: pick one in the sidebar (**Store**), or build one — see **Home**."
        )
        st.stop()
    if getattr(ctx.store, "pooled", False):  # SigLIP: one term no head's direct effect explains
        pooled_notice(ctx.store)
    return ctx.store


def pooled_notice(store) -> None:
    """An attention-pooled store: how large the pool-MLP term is (read from the store)."""
    share = store.pool_mlp_share()
    if share["mean"] is not None:
        st.info(
            f"Attention-pooled model (SigLIP): the pool's MLP branch is one term that no head "
            f"explains, ‖pool_mlp‖ / ‖embedding‖ = {share['mean']:.2f} on average (max "
            f"{share['max']:.2f}) over {share['n_images']} stored images; the heads' direct "
            "effects explain correspondingly less than in a class-token CLIP."
        )


def require_query(ctx) -> QueryImage:
    """The query image, or stop the page with a clear message."""
    if ctx.query is None:
        if ctx.query_error:
            st.error(ctx.query_error)
        st.info("Pick a sample, a stored image or upload one in the sidebar (**Image**).")
        st.stop()
    return ctx.query


def run(what: str, fn, *args, **kwargs):
    """Call the store session (an analysis, the model) under a spinner; a UserError (e.g. the
    store's weights are not on this machine) is shown as one line and stops the page."""
    try:
        with st.spinner(what):
            return fn(*args, **kwargs)
    except UserError as e:
        st.error(
            f"{e}. Analyses of a new image need the store's model; the store's own images "
            "still work where no new decomposition is needed (pick one **From the store**)."
        )
        st.stop()
