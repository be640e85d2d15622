"""The page of one unit (a head `L7H3`; neurons `L9N123` will reuse it): reusable pieces.

Everything here reads the store's precomputed tables (`engine.store.unit_tables`, written by
`interpret` and `visualise`) and thumbnails, never the contribution arrays, so a page renders in
well under a second on any store size. Only the optional "on the query image" section runs the
model (through the store session, like the analysis pages).
"""

from __future__ import annotations

import io
import re

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboard import render, routes, stored, stores
from engine.core import units
from engine.core.layers import head_name
from engine.store import unit_tables

UNIT_PATTERN = re.compile(r"L(\d+)H(\d+)", re.IGNORECASE)
TILE = 96  # px of one example tile


def parse_unit(text: str | None) -> tuple[int, int] | None:
    """`L7H3` (any case) -> (7, 3); anything else -> None."""
    m = UNIT_PATTERN.fullmatch((text or "").strip())
    return (int(m[1]), int(m[2])) if m else None


@st.cache_data(show_spinner=False, max_entries=8)
def summary(key: str) -> pd.DataFrame:
    """Every unit's summary row of one store version (schema `unit_summary`)."""
    return unit_tables.unit_summary(stores.session(key).reader)


@st.cache_data(show_spinner=False, max_entries=64)
def examples(key: str, layer: int, head: int) -> pd.DataFrame:
    return unit_tables.unit_examples(stores.session(key).reader, layer, head)


@st.cache_data(show_spinner=False, max_entries=64)
def histograms(key: str, layer: int, head: int) -> pd.DataFrame:
    return unit_tables.unit_histograms(stores.session(key).reader, layer, head)


@st.cache_data(show_spinner=False, max_entries=64)
def visualisation(key: str, layer: int, head: int) -> pd.DataFrame:
    return unit_tables.unit_visualisations(stores.session(key).reader, layer, head)


def neighbours(units_list: list, here) -> tuple:
    """(previous, next) unit of `here` in `units_list`, wrapping around."""
    i = units_list.index(here)
    return units_list[i - 1], units_list[(i + 1) % len(units_list)]


def model_crop(thumb: np.ndarray, width: int, height: int) -> np.ndarray:
    """The part of a letterboxed thumbnail `[T, T, 3]` that the model's square centre crop sees
    (the whole thumbnail for a square image), so a map lies over what it describes."""
    t = thumb.shape[0]
    s = t / max(width, height, 1)
    w, h = width * s, height * s  # the image inside the letterbox
    side = min(w, h)
    y0, x0 = int(round((t - side) / 2)), int(round((t - side) / 2))
    side_px = max(1, int(round(side)))
    return thumb[y0 : y0 + side_px, x0 : x0 + side_px]


def stored_map(m) -> np.ndarray | None:
    """An example row's map as float32 `[grid*grid]`, or None when the row has none (a NULL
    reads back as None or pd.NA: maps skipped, random data, unreadable image)."""
    if isinstance(m, (list, tuple, np.ndarray)):
        return np.asarray(m, np.float32)
    return None


def example_tiles(store, ex: pd.DataFrame, grid: int, vmax: float) -> list[Image.Image]:
    """Thumbnails of `ex`'s images with their maps over them (one shared colour scale)."""
    thumbs = stored.thumbnails(store, ex["image_id"].tolist())
    sizes = unit_tables.image_sizes(store.reader, ex["image_id"])
    tiles = []
    for t, (_, row) in zip(thumbs, ex.iterrows(), strict=True):
        w, h = (sizes.loc[row.image_id, ["width", "height"]] if row.image_id in sizes.index
                else (t.shape[1], t.shape[0]))  # fmt: skip
        img = np.asarray(Image.fromarray(model_crop(t, int(w), int(h))).resize((TILE, TILE)))
        m = stored_map(row["map"])
        if m is not None and len(m) == grid * grid:
            img = render.heat_overlay(img, m.reshape(grid, grid), vmax)
        tiles.append(Image.fromarray(img))
    return tiles


def show_examples(store, ex: pd.DataFrame, title: str, grid: int, vmax: float) -> None:
    st.markdown(title)
    if ex.empty:
        st.caption("none")
        return
    st.image(
        example_tiles(store, ex, grid, vmax),
        caption=[f"#{int(i)} · {p:.3g}" for i, p in zip(ex.image_id, ex.projection, strict=True)],
        width=TILE,
    )


def histogram_chart(hist: pd.DataFrame, quantity: str, title: str) -> alt.Chart:
    h = hist[hist.quantity == quantity].assign(images=lambda d: d["count"].astype(int))
    return (
        alt.Chart(h, title=title)
        .mark_bar()
        .encode(
            x=alt.X("lo:Q", bin="binned", title=title),
            x2="hi:Q",
            y=alt.Y("images:Q", title="images"),
            tooltip=["lo", "hi", "images"],
        )
        .properties(height=180)
    )


def related_units(summ: pd.DataFrame, here: tuple[int, int], n: int = 8) -> pd.DataFrame:
    """The units whose principal directions are most aligned with `here`'s (|cosine|)."""
    dirs = np.stack([np.asarray(d, np.float32) for d in summ["direction"]])  # [unit, d_embed]
    keys = list(zip(summ["layer"].astype(int), summ["head"].astype(int), strict=True))
    idx, cos = units.related(dirs, keys.index(here), n)
    return pd.DataFrame({"unit": [head_name(*keys[i]) for i in idx], "cosine": np.round(cos, 3)})


def png_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def open_unit(ctx, layer: int, head: int) -> None:
    """Go to the Head page of (layer, head) (e.g. from a click on the Heads grid)."""
    params = routes.link_params(ctx, unit=head_name(layer, head))
    st.switch_page(str(routes.route("head").script), query_params=params)


def unit_link(ctx, layer: int, head: int, label: str | None = None) -> None:
    """A link to the Head page of (layer, head), for any page that names a head."""
    st.page_link(
        str(routes.route("head").script),
        label=label or head_name(layer, head),
        query_params=routes.link_params(ctx, unit=head_name(layer, head)),
    )


def clicked_row(event, frame: pd.DataFrame) -> tuple[int, int] | None:
    """(layer, head) of the row selected in a `st.dataframe(..., on_select=...)` of `frame`."""
    rows = list(getattr(getattr(event, "selection", None), "rows", None) or [])
    if not rows or rows[0] >= len(frame):
        return None
    r = frame.iloc[int(rows[0])]
    return int(r["layer"]), int(r["head"])


def clicked_cell(event, param: str) -> tuple[int, int] | None:
    """(layer, head) of the point selected by the chart parameter `param` (fields layer, head)
    in a `st.altair_chart(..., on_select=...)` event."""
    selection = getattr(event, "selection", None) or {}
    points = selection.get(param) if hasattr(selection, "get") else None
    if not points:
        return None
    p = points[0]
    try:
        return int(p["layer"]), int(p["head"])
    except (KeyError, TypeError, ValueError):
        return None


def open_clicked(ctx, unit: tuple[int, int] | None) -> None:
    """Open the Head page of a clicked unit (nothing when none was clicked)."""
    if unit is not None:
        open_unit(ctx, *unit)


def heads_links(ctx, heads: list[tuple[int, int]], what: str = "in this map") -> None:
    """Links to the Head pages of `heads` [(layer, head)]: one link for one head, else a list."""
    if not heads:
        return
    if len(heads) == 1:
        unit_link(ctx, *heads[0], f"{head_name(*heads[0])}'s page")
        return
    with st.expander(f"Pages of the {len(heads)} heads {what}"):
        st.markdown(
            " · ".join(
                f"[{head_name(l, h)}]({routes.href('head', routes.link_params(ctx, unit=head_name(l, h)))})"
                for l, h in heads
            )
        )


def mask_links(ctx, store, mask: np.ndarray) -> None:
    """Links to the Head pages of the heads a map sums (`mask` [layer, head] over the stored
    layers, as `widgets.head_mask_picker` returns it)."""
    chosen = [
        (l, h) for i, l in enumerate(store.layers) for h in range(mask.shape[1]) if mask[i, h]
    ]
    heads_links(ctx, chosen)
