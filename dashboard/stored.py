"""Stored images as the dashboard shows them: named (file name and class, or the demo world's
factors), searchable, usable as the query image; uploads that repeat one are flagged."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st
from PIL import Image

from dashboard import head_cache, stores, tables, uploads
from dashboard.query import QueryImage
from engine.errors import UserError
from engine.store import StoreReader


def image_name(path: str) -> str:
    """A stored image's short name: its file name; a generated image's source id
    (`synthetic:SEED/N`) as it is."""
    return path if ":" in path.split("/", 1)[0] else Path(path).name


@st.cache_data(show_spinner=False, max_entries=8)
def _catalogue(key: str) -> pd.DataFrame:
    store = stores.reader(key)
    images = store.images().set_index("image_id")
    out = pd.DataFrame(index=images.index)
    out["name"] = [image_name(str(p or "")) for p in images["path"]]
    out["class"] = images["class"]
    out["sha256"] = images["sha256"]
    factors = tables.table(store, "image_factors")
    if not factors.empty:  # the demo world: "red striped circle, small, top left on grey"
        wide = factors.pivot(index="image_id", columns="factor", values="value")
        order = [f for f in (store.info.get("factors") or []) if f in wide] or list(wide.columns)
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


def catalogue(store: StoreReader) -> pd.DataFrame:
    """One row per stored image (index image_id): name, class, factors (demo world), caption
    ('name · class' or 'name · factors'), sha256."""
    return _catalogue(stores.version_key(store))


def captions(store: StoreReader, ids) -> list[str]:
    """The captions of stored images, in the order given."""
    cat = catalogue(store)
    return [str(cat.at[int(i), "caption"]) for i in ids]


def search(store: StoreReader, text: str) -> pd.DataFrame:
    """Stored images whose name, class or factors contain `text` (case-insensitive)."""
    cat = catalogue(store)
    cols = [c for c in ("name", "class", "factors") if c in cat]
    hit = cat[cols].astype(str).apply(lambda c: c.str.contains(text, case=False, regex=False))
    return cat[hit.any(axis=1)]


def query_from_store(store: StoreReader, index: int) -> QueryImage:
    """A stored image: its source file when still readable, else its thumbnail."""
    index = int(index)
    sha = f"store:{stores.version_key(store)}:{index}"
    label = f"stored image #{index} · {captions(store, [index])[0]}"
    row = store.images().iloc[index]
    path = str(row["path"] or "")
    if path and Path(path).is_file():
        try:
            image = uploads.query_from_bytes(Path(path).read_bytes(), path).image
            return QueryImage(image, sha, label, index)
        except UserError:
            pass
    thumb = head_cache.thumbnails(store, [index])[0]
    return QueryImage(Image.fromarray(thumb), sha, f"{label} (thumbnail)", index)


def flag_duplicate(store: StoreReader, q: QueryImage) -> QueryImage:
    """The upload, marked with the stored image it repeats exactly (same file bytes, or the
    same decoded pixels for generated images), if any."""
    cat = catalogue(store)
    hits = cat.index[cat["sha256"].isin([q.sha, q.pixel_sha()])]
    return q.with_duplicate(int(hits[0])) if len(hits) else q
