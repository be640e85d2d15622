"""Stored images as the dashboard shows them: named (file name and class, or the demo world's
factors), searchable, usable as the query image; uploads that repeat one are flagged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import stores
from dashboard.query import QueryImage
from engine.session import StoreSession


def image_name(path: str) -> str:
    """A stored image's short name: its file name; a generated image's source id
    (`synthetic:SEED/N`) as it is."""
    return path if ":" in path.split("/", 1)[0] else Path(path).name


@st.cache_data(show_spinner=False, max_entries=8)
def _catalogue(key: str) -> pd.DataFrame:
    store = stores.session(key)
    images = store.reader.images().set_index("image_id")
    out = pd.DataFrame(index=images.index)
    out["name"] = [image_name(str(p or "")) for p in images["path"]]
    out["class"] = images["class"]
    out["sha256"] = images["sha256"]
    factors = store.reader.table("image_factors")
    if not factors.empty:  # the demo world: "red striped circle, small, top left on grey"
        wide = factors.pivot(index="image_id", columns="factor", values="value")
        order = [f for f in (store.meta.factors or ()) if f in wide] or list(wide.columns)
        out["factors"] = wide[order].astype(str).agg(", ".join, axis=1).reindex(out.index)
    generated = images["path"].astype(str).str.match(r"^[a-z]+:")
    described = out["class"].where(out["class"].notna(), out.get("factors"))
    out["caption"] = [
        _caption(None if g and isinstance(d, str) else n, d)  # the world's factors name it
        for n, d, g in zip(out["name"], described, generated, strict=True)
    ]
    return out


def _caption(name: str | None, description) -> str:
    has = isinstance(description, str) and description != ""
    if name is None:
        return str(description)
    return f"{name} · {description}" if has else name


def catalogue(store: StoreSession) -> pd.DataFrame:
    """One row per stored image (index image_id): name, class, factors (demo world), caption
    ('name · class' or 'name · factors'), sha256."""
    return _catalogue(stores.version_key(store))


def captions(store: StoreSession, ids) -> list[str]:
    """The captions of stored images, in the order given."""
    cat = catalogue(store)
    return [str(cat.at[int(i), "caption"]) for i in ids]


def search(store: StoreSession, text: str) -> pd.DataFrame:
    """Stored images whose name, class or factors contain `text` (case-insensitive)."""
    cat = catalogue(store)
    cols = [c for c in ("name", "class", "factors") if c in cat]
    hit = cat[cols].astype(str).apply(lambda c: c.str.contains(text, case=False, regex=False))
    return cat[hit.any(axis=1)]


@st.cache_data(show_spinner=False, max_entries=64)
def _thumbs(key: str, ids: tuple[int, ...]) -> np.ndarray:
    return np.asarray(stores.session(key).thumbnails(list(ids)))


def thumbnails(store: StoreSession, ids) -> np.ndarray:
    """uint8 ``[image, T, T, 3]`` thumbnails of stored images, in the order given (cached)."""
    return _thumbs(stores.version_key(store), tuple(int(i) for i in ids))


def query_from_store(store: StoreSession, index: int) -> QueryImage:
    """A stored image as the query (the session's: its source file when still readable, else
    its thumbnail), labelled with its name and class or factors."""
    q = store.query_from_store(int(index))
    label = f"stored image #{int(index)} · {captions(store, [index])[0]}"
    if q.label.endswith("(thumbnail)"):
        label += " (thumbnail)"
    return QueryImage(q.image, q.sha, label, q.store_index)


def flag_duplicate(store: StoreSession, q: QueryImage) -> QueryImage:
    """The upload, marked with the stored image it repeats exactly (same file bytes, or the
    same decoded pixels for generated images), if any."""
    cat = catalogue(store)
    hits = cat.index[cat["sha256"].isin([q.sha, q.pixel_sha()])]
    return q.with_duplicate(int(hits[0])) if len(hits) else q
