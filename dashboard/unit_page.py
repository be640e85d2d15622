"""The page of one unit, a head `L7H3` or an MLP neuron `L6N12` (one page, `views/head.py`, for
both kinds): its pieces. Kind-specific facts are gathered by `unit_facts` and `query_map` into
the same shapes, so the page renders either kind the same way.

Everything here reads the store's precomputed tables (`engine.store.unit_tables`, written by
`interpret` and `visualise`) and thumbnails, never the contribution arrays, so a page renders in
well under a second on any store size. Only the optional "on the query image" section runs the
model (through the store session, like the analysis pages).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import NamedTuple

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboard import render, routes, stored, stores
from engine.core import units
from engine.core.layers import head_name, parse_unit_name, unit_name
from engine.errors import UserError
from engine.store import unit_tables

TILE = 96  # px of one example tile


class Unit(NamedTuple):
    """A unit named in a URL: kind (head | neuron), layer, index (head or neuron)."""

    kind: str
    layer: int
    index: int

    @property
    def name(self) -> str:
        return unit_name(self.kind, self.layer, self.index)


def parse_unit(text: str | None) -> Unit | None:
    """`L7H3` -> Unit("head", 7, 3), `L6N12` -> Unit("neuron", 6, 12) (any case); else None."""
    got = parse_unit_name(text)
    return Unit(*got) if got else None


@st.cache_data(show_spinner=False, max_entries=8)
def summary(key: str) -> pd.DataFrame:
    """Every unit's summary row of one store version (schema `unit_summary`): heads, then
    neurons."""
    return unit_tables.unit_summary(stores.session(key).reader, "all")


@st.cache_data(show_spinner=False, max_entries=64)
def examples(key: str, unit: str) -> pd.DataFrame:
    return unit_tables.unit_examples_of(stores.session(key).reader, unit)


@st.cache_data(show_spinner=False, max_entries=64)
def histograms(key: str, unit: str) -> pd.DataFrame:
    return unit_tables.unit_histograms_of(stores.session(key).reader, unit)


@st.cache_data(show_spinner=False, max_entries=64)
def visualisation(key: str, unit: str) -> pd.DataFrame:
    return unit_tables.unit_visualisation_of(stores.session(key).reader, unit)


@dataclass
class UnitFacts:
    """What the page shows of one unit beyond the shared tables, in kind-neutral shapes.

    metrics: [(label, value text)]; texts: (title, rows) the unit's own description (TextSpan
    texts, or a neuron's OMP words with weights); ground_truth: factor, eta2, is_dominant rows;
    what: the quantity's noun ("contribution", "second-order effect")."""

    kind: str
    label: str
    labeller: str
    caption: str
    what: str
    metrics: list = field(default_factory=list)
    texts: tuple = ("", None)
    ground_truth: pd.DataFrame | None = None


def _head_facts(store, row) -> UnitFacts:
    from dashboard import tables

    layer, head = int(row.layer), int(row["head"])
    label, labeller = unit_tables.head_label(store.reader, layer, head)
    metrics = [("Share of embedding variance", f"{row.variance_share:.2%}"),
               ("Variance along its direction", f"{row.explained:.1%}")]  # fmt: skip
    effects = store.reader.table("head_effects")
    own = effects[(effects.layer == layer) & (effects.head == head)]
    if len(own):
        pick = own[own.task == label] if (own.task == label).any() else own
        best = pick.sort_values("drop", ascending=False).iloc[0]
        metrics.append((f"Ablation drop ({best.task})", f"{best['drop']:+.3f}"))
    else:
        metrics.append(("Ablation drop", "not run"))
    seg = store.reader.table("segmentation_scores")
    seg = seg[(seg.scope == "head") & (seg.layer == layer) & (seg["head"] == head)]
    if len(seg):
        s = seg.iloc[-1]
        metrics.append((f"Segmentation pointing ({s.text})", f"{s.pointing:.3f}"))
    else:
        metrics.append(("Segmentation", "not run"))
    gt = store.reader.table("ground_truth")
    gt = gt[(gt.layer == layer) & (gt["head"] == head)]
    return UnitFacts(
        "head", label or "(unlabelled)", labeller or "—",
        f"Direction: the head's first principal direction over the {int(row.n_images):,} stored "
        "images (sign: its mean contribution points along it).",
        "contribution", metrics, ("TextSpan texts", tables.textspan_texts(store, layer, head)),
        gt[["factor", "eta2", "is_dominant"]],
    )  # fmt: skip


def percent(x: float) -> str:
    """A share as a percentage with two significant digits when small (a neuron's 0.00021 %)."""
    return f"{x:.2%}" if not abs(x) < 1e-3 else f"{100 * x:.2g} %"


def recorded_neuron_drop(store, layer: int, neuron: int) -> tuple[str, float] | None:
    """(task, accuracy drop) of the recorded neuron ablation that best shows this neuron's own
    effect (`ablate --ablate L6N12`, read through the session from `engine.store.neuron_ablations`):
    a run that removed it alone if there is one, else any run that removed it; the largest drop.
    None when no recorded run removed it."""
    drops = store.neuron_ablation_drops(int(layer), int(neuron))
    if drops.empty:
        return None
    own = drops[drops.alone.astype(bool)] if drops.alone.astype(bool).any() else drops
    best = own.sort_values("drop", ascending=False).iloc[0]
    return str(best.task), float(best["drop"])


def neuron_ablations(ctx, store, name: str, layer: int, neuron: int) -> None:
    """The recorded `ablate` runs that removed this neuron (its own drop where it was alone)."""
    st.subheader("Recorded ablations")
    drops = store.neuron_ablation_drops(int(layer), int(neuron))
    if drops.empty:
        st.caption(
            f"No recorded ablation removed {name}: `python -m engine ablate --store "
            f"{ctx.store_path} --ablate {name}` records its own accuracy drop (the Ablation page "
            "shows such runs without recording them)."
        )
        return
    cols = ["spec", "n_ablated", "task", "before", "after", "drop", "random_mean", "finished_at"]
    st.dataframe(
        drops[cols], hide_index=True, width="stretch", height=220,
        column_config={c: st.column_config.NumberColumn(format="%.3f")
                       for c in ("before", "after", "drop", "random_mean")},
    )  # fmt: skip
    st.caption(
        "Every recorded `ablate` run that removed this neuron, the latest first: its own drop where "
        "it was ablated alone (n_ablated 1), else the drop of the set it was in; random_mean: as "
        "many random neurons of the layer ablated instead."
    )


def _neuron_facts(store, row) -> UnitFacts:
    layer, neuron = int(row.layer), int(row.neuron)
    f = store.neuron_facts(layer, neuron)  # the neuron tables, through the session
    metrics = [("Significance (mean centred norm)", f"{f.significance:.4g}"),
               ("Share of embedding variance", percent(row.variance_share)),
               ("Variance along its direction (top images)", f"{row.explained:.1%}")]  # fmt: skip
    drop = recorded_neuron_drop(store, layer, neuron)
    metrics.append(
        (f"Ablation drop ({drop[0]})", f"{drop[1]:+.3f}") if drop else ("Ablation drop", "not recorded")
    )  # fmt: skip
    gt = store.reader.table("neuron_ground_truth")
    gt = gt[(gt.layer == layer) & (gt.neuron == neuron)]
    return UnitFacts(
        "neuron", f.label, f.labeller,
        f"MLP neuron {neuron} of layer {layer}, through the later heads (its second-order "
        f"effect). Direction: the first principal direction of its {int(row.proj_images)} "
        f"most affected images (significant above a centred norm of {f.threshold:.3g}).",
        "second-order effect", metrics,
        ("Words (sparse code of its direction)", f.words[["text", "category", "weight"]]),
        gt[["factor", "eta2", "is_dominant"]],
    )  # fmt: skip


def unit_facts(store, row) -> UnitFacts:
    """The facts of the unit of summary row `row` (either kind)."""
    return _neuron_facts(store, row) if row.kind == "neuron" else _head_facts(store, row)


def nearest_texts(row) -> tuple[list | None, list | None]:
    """The bank texts nearest each sign of the unit's direction (stored with its summary)."""
    return tuple(json.loads(x) if isinstance(x, str) else None
                 for x in (row.get("texts_along"), row.get("texts_against")))  # fmt: skip


def query_map(store, q, row) -> tuple[np.ndarray, float, float | None]:
    """The unit on the query image (runs the model through the session): (map [grid, grid]
    along its direction, the projection on it, the effect's norm or None)."""
    direction = np.asarray(row.direction, np.float32)  # [d_embed]
    if row.kind == "neuron":
        m = store.neuron_map(q, int(row.layer), int(row.neuron), direction)
        return np.asarray(m.patches), float(m.total), float(m.norm)
    layer, head = int(row.layer), int(row["head"])
    all_maps = store.maps(q, direction)
    grid_map = all_maps[store.layers.index(layer), head]  # [grid, grid]
    return grid_map, float(store.query_head_out(q, [(layer, head)])[0] @ direction), None


def examples_note(row) -> str:
    """How certain the extreme images are: heads' are exact; a neuron's are taken among its
    most affected images, exact where the stored certificate says so."""
    if row.kind != "neuron":
        return ""
    sides = [s for s, ok in (("top", row.exact_top), ("bottom", row.exact_bottom)) if not ok]
    if not sides:
        return " Both sides are the store's exact extremes."
    return (
        f" The {' and '.join(sides)} images are the extremes among its {int(row.proj_images)} "
        "most affected images (the store's exact extremes could differ there: their projections "
        "stay within ± its significance threshold)."
    )


def variance_note(summ: pd.DataFrame, row) -> str:
    """What a unit's share of the embedding variance means, with its rank among its kind."""
    same = summ[summ["kind"] == row.kind]
    rank = int((same.variance_share > row.variance_share).sum()) + 1
    what = "head's contribution" if row.kind == "head" else "neuron's second-order effect"
    return (
        f"Share of embedding variance: var({what}) ÷ var(embedding), rank {rank} of {len(same)} "
        f"{row.kind}s; the embedding's variance is spread over every head, MLP and their "
        f"covariances, so a labelled {row.kind} can carry well under 1 % of it "
        "(docs/unit-pages.md)."
    )


def safe_facts(store, row) -> UnitFacts | str:
    """`unit_facts`, or the one-line reason it cannot be read (e.g. a neuron table missing)."""
    try:
        return unit_facts(store, row)
    except UserError as e:
        return str(e)


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


def stored_map(x) -> np.ndarray | None:
    """An example's stored per-patch map `[grid*grid]`, or None where it has none (NULL)."""
    if x is None or not hasattr(x, "__len__"):
        return None
    return np.asarray(x, np.float32)


def map_scale(ex: pd.DataFrame) -> float:
    """One colour scale for the examples' maps: their largest |value| (1 when none)."""
    maps = [m for m in map(stored_map, ex["map"]) if m is not None and m.size]
    return max((float(np.abs(m).max()) for m in maps), default=1.0) or 1.0


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


def related_units(summ: pd.DataFrame, here: str, n: int = 8) -> pd.DataFrame:
    """The units (heads and neurons) whose principal directions are most aligned with unit
    `here`'s (|cosine|)."""
    dirs = np.stack([np.asarray(d, np.float32) for d in summ["direction"]])  # [unit, d_embed]
    names = summ["unit"].tolist()
    idx, cos = units.related(dirs, names.index(here), n)
    return pd.DataFrame({"unit": [names[i] for i in idx], "cosine": np.round(cos, 3)})


def png_image(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def open_unit(ctx, layer: int, head: int) -> None:
    """Go to the Head page of (layer, head) (e.g. from a click on the Heads grid)."""
    open_unit_named(ctx, head_name(layer, head))


def open_unit_named(ctx, name: str) -> None:
    """Go to the unit page of `name` (`L7H3` or `L6N12`; e.g. a row of the Neurons table)."""
    st.switch_page(
        str(routes.route("head").script), query_params=routes.link_params(ctx, unit=name)
    )


def named_link(ctx, name: str, label: str | None = None) -> None:
    """A link to the unit page of `name` (`L7H3` or `L6N12`)."""
    st.page_link(
        str(routes.route("head").script),
        label=label or name,
        query_params=routes.link_params(ctx, unit=name),
    )


def names_markdown(ctx, names: list[str]) -> str:
    """Markdown links to the unit pages of `names` (`L7H3`, `L6N12`), joined by " · "."""
    return " · ".join(
        f"[{n}]({routes.href('head', routes.link_params(ctx, unit=n))})" for n in names
    )


def clicked_unit(event, frame: pd.DataFrame) -> str | None:
    """The `unit` name of the row selected in a `st.dataframe(..., on_select=...)` of `frame`."""
    rows = list(getattr(getattr(event, "selection", None), "rows", None) or [])
    if not rows or rows[0] >= len(frame):
        return None
    return str(frame.iloc[int(rows[0])]["unit"])


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
