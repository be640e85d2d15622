"""The sidebar: the store picker (with the store's provenance) and the query-image picker.

Widgets only: their keys are `dashboard.state`'s, their values are returned to the entrypoint,
which publishes them (URL + page context).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from dashboard import settings, state, stored, stores, tables, uploads
from dashboard.query import QueryImage
from engine.errors import UserError
from engine.session import StoreSession


@dataclass(frozen=True)
class StoreChoice:
    store: StoreSession | None
    path: str | None


def store_picker(paths: list[str]) -> StoreChoice:
    """Store picker (the listed stores, or any folder typed) -> the open store or None."""
    st.sidebar.subheader("Store")
    choice = st.sidebar.selectbox(
        "Store",
        paths + [settings.OTHER_PATH],
        key=state.K_STORE_CHOICE,
        format_func=lambda p: Path(p).name if p != settings.OTHER_PATH else p,
        label_visibility="collapsed",
    )
    if choice == settings.OTHER_PATH:
        path = st.sidebar.text_input(
            "Store folder", key=state.K_STORE_TYPED, placeholder="artifacts/demo"
        ).strip()
    else:
        path = choice
    if not path:
        return StoreChoice(None, None)
    try:
        store = stores.open_store(path)
    except UserError as e:
        st.sidebar.error(str(e))
        return StoreChoice(None, None)
    _provenance(store, path)
    return StoreChoice(store, path)


def _provenance(store: StoreSession, path: str) -> None:
    m, meta = store.model_record, store.meta
    interpreted = tables.interpreted(store)
    st.sidebar.markdown(
        f"**Model** `{m.model_spec}`"
        + (" (random weights)" if m.random_weights else "")
        + f"  \n**Images** {store.n_images:,}"
        + f"  \n**Heads** layers {store.layers} × {m.n_heads} heads"
        + f"  \n**Built** {meta.built_at[:19]}"
        + f"  \n**Run** `{meta.run_id[:12]}` · code `{meta.code_version or '?'}`"
        + f"  \n**Images from** {meta.images_source}"
        + "  \n**Interpreted** "
        + ("yes" if interpreted else f"no — run `python -m engine interpret --store {path}`")
    )


@dataclass(frozen=True)
class ImageChoice:
    """The query image (or the reason there is none) and its URL identity (empty: an upload,
    which cannot be linked)."""

    query: QueryImage | None
    error: str | None
    params: dict[str, str]
    linked: bool


def image_picker(store: StoreSession) -> ImageChoice:
    """Image picker: a bundled sample, a stored image (searchable by file name or class) or an
    upload."""
    st.sidebar.subheader("Image")
    source = st.sidebar.radio(
        "Image source",
        state.IMAGE_SOURCES,
        key=state.K_IMAGE_SOURCE,
        horizontal=True,
        label_visibility="collapsed",
    )
    try:
        choice = _pick(store, source)
    except UserError as e:
        st.sidebar.error(str(e))
        return ImageChoice(None, str(e), {}, source != state.SOURCE_UPLOAD)
    q = choice.query
    if q is not None and q.notes:
        st.sidebar.info("Upload converted: " + "; ".join(q.notes))
    if q is not None:
        st.sidebar.image(q.crop(192), caption=f"{q.label} (the model's centre crop)", width=192)
        if q.duplicate_of is not None:
            st.sidebar.warning(
                f"This upload is stored image #{q.duplicate_of} (identical pixels): it is its "
                "own best neighbour. Pick it **From the store** to leave it out."
            )
    if not choice.linked and q is not None:
        st.sidebar.caption(
            "An uploaded image is not part of the page's link: a copied URL opens the same "
            "store and page without it."
        )
    return choice


def _pick(store: StoreSession, source: str) -> ImageChoice:
    if source == state.SOURCE_SAMPLE:
        path = st.sidebar.selectbox(
            "Sample",
            uploads.sample_paths(),
            key=state.K_SAMPLE,
            format_func=lambda p: p.stem.replace("_", " "),
        )
        if path is None:
            return ImageChoice(None, None, {}, True)
        q = uploads.query_from_bytes(Path(path).read_bytes(), f"sample {Path(path).stem}")
        return ImageChoice(q, None, {state.P_SAMPLE: Path(path).stem}, True)
    if source == state.SOURCE_STORE:
        n = store.n_images
        if n == 0:
            st.sidebar.info("This store has no images.")
            return ImageChoice(None, None, {}, True)
        _search_stored(store)
        state.clamp_store_image(n)
        idx = st.sidebar.number_input(
            "Stored image #", min_value=0, max_value=n - 1, step=1, key=state.K_STORE_IMAGE
        )
        q = stored.query_from_store(store, int(idx))
        return ImageChoice(q, None, {state.P_IMAGE: str(int(idx))}, True)
    up = st.sidebar.file_uploader(
        "Upload an image",
        type=None,
        key=state.K_UPLOAD,
        help="Any common format (PNG, JPEG, WebP, GIF, TIFF, BMP). Size limit from "
        ".streamlit/config.toml.",
    )
    if up is None:
        return ImageChoice(None, None, {}, False)
    q = uploads.query_from_bytes(up.getvalue(), up.name)
    return ImageChoice(stored.flag_duplicate(store, q), None, {}, False)


def _search_stored(store: StoreSession) -> None:
    """Search the stored images by file name or class; a pick sets the image number."""
    text = st.sidebar.text_input(
        "Search stored images",
        key=state.K_STORE_IMAGE_SEARCH,
        placeholder="file name or class",
    ).strip()
    if not text:
        return
    hits = stored.search(store, text)
    if hits.empty:
        st.sidebar.caption(f"No stored image matches “{text}”.")
        return
    shown = hits.head(50)
    st.sidebar.selectbox(
        f"{len(hits):,} match(es)" + (" (first 50)" if len(hits) > 50 else ""),
        list(shown.index),
        index=None,
        placeholder="pick a match",
        key=state.K_STORE_IMAGE_HIT,
        format_func=lambda i: f"#{i} · {shown.loc[i, 'caption']}",
        on_change=state.take_store_image_hit,
    )
