"""The dashboard's state: every `st.session_state` key and `st.query_params` name, here only.

Two kinds of state, each with one owner:

- **The view, in the URL.** `store=NAME` (a store under the artifacts folder, by its name; any
  other store by its folder path) and the query image's identity: `sample=STEM` (a bundled
  sample) or `image=ID` (a stored image). An upload has no identity that a URL can carry: it is
  never linked, and the sidebar says so. On a session's first run (a cold server, a new tab, a
  reload, a shared link) the sidebar is seeded from the URL; every run writes the view back,
  because Streamlit clears query parameters when the navigation changes page. Pages may own
  further parameters of their own (e.g. `unit=L7H3`), read with `url_param`.
- **The session.** The sidebar widgets' values (their keys are below) and this run's
  `PageContext` (the open store, the query image), which the entrypoint sets before the page
  runs and the page reads with `page_context()`.

Everything else in the dashboard receives values as arguments; a test checks that no other
module touches `st.session_state` or `st.query_params`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from dashboard.query import QueryImage
from dashboard.settings import OTHER_PATH
from engine.session import StoreSession

# URL parameters of the view (shared by every page)
P_STORE = "store"
P_SAMPLE = "sample"
P_IMAGE = "image"
VIEW_PARAMS = (P_STORE, P_SAMPLE, P_IMAGE)

# sidebar widget keys
K_STORE_CHOICE = "store_choice"
K_STORE_TYPED = "store_typed"
K_IMAGE_SOURCE = "image_source"
K_SAMPLE = "sample"
K_STORE_IMAGE = "store_image"
K_STORE_IMAGE_SEARCH = "store_image_search"
K_STORE_IMAGE_HIT = "store_image_hit"
K_UPLOAD = "upload"
# the session's own
_K_SEEDED = "_seeded_from_url"
_K_CONTEXT = "_page_context"

SOURCE_SAMPLE, SOURCE_STORE, SOURCE_UPLOAD = "Sample", "From the store", "Upload"
IMAGE_SOURCES = (SOURCE_SAMPLE, SOURCE_STORE, SOURCE_UPLOAD)


@dataclass(frozen=True)
class PageContext:
    """What the sidebar chose this run, handed to the page.

    ``store_param``: the store as the URL names it (None when no store is open);
    ``store_path``: the folder as picked (for commands shown on pages); ``query``: the query
    image (None with ``query_error`` when unusable or not chosen); ``linked``: whether the
    query image is part of the URL (False for uploads)."""

    store: StoreSession | None = None
    store_path: str | None = None
    store_param: str | None = None
    query: QueryImage | None = None
    query_error: str | None = None
    linked: bool = True


# ------------------------------------------------------------------------- seeding from the URL


def seed_from_url(store_paths: list[str], sample_paths: list[Path], default_store: str | None):
    """On the session's first run only: set the sidebar's widget values from the URL (else
    `default_store`, e.g. $CLIP_INTERPRET_STORE). Later runs keep the session's own values."""
    ss = st.session_state
    if ss.get(_K_SEEDED):
        return
    ss[_K_SEEDED] = True
    params = st.query_params
    wanted = params.get(P_STORE) or default_store
    if wanted:
        choice = match_store(wanted, store_paths)
        if choice is not None:
            ss[K_STORE_CHOICE] = choice
        else:  # not listed: a folder path (or a name that is gone: the picker says so)
            ss[K_STORE_CHOICE] = OTHER_PATH
            ss[K_STORE_TYPED] = wanted
    sample = params.get(P_SAMPLE)
    image = params.get(P_IMAGE)
    if image is not None and image.isdigit():
        ss[K_IMAGE_SOURCE] = SOURCE_STORE
        ss[K_STORE_IMAGE] = int(image)
    elif sample:
        hit = [p for p in sample_paths if p.stem == sample]
        if hit:
            ss[K_IMAGE_SOURCE] = SOURCE_SAMPLE
            ss[K_SAMPLE] = hit[0]


def match_store(wanted: str, store_paths: list[str]) -> str | None:
    """The listed store a URL's `store` value names: by name, else by the same folder."""
    for p in store_paths:
        if Path(p).name == wanted:
            return p
    for p in store_paths:
        if Path(wanted).exists() and Path(p).resolve() == Path(wanted).resolve():
            return p
    return None


def store_param(path: str, store_paths: list[str]) -> str:
    """How the URL names a store: its name when listed under the artifacts folder (names are
    unique there), else its folder path."""
    return Path(path).name if path in store_paths else path


# ----------------------------------------------------------------------------- widget helpers


def clamp_store_image(n_images: int) -> None:
    """Keep the stored-image number inside a (smaller) newly picked store."""
    ss = st.session_state
    if ss.get(K_STORE_IMAGE, 0) > n_images - 1:
        ss[K_STORE_IMAGE] = max(0, n_images - 1)


def take_store_image_hit() -> None:
    """Callback of the stored-image search: the picked match becomes the stored image."""
    hit = st.session_state.get(K_STORE_IMAGE_HIT)
    if hit is not None:
        st.session_state[K_STORE_IMAGE] = int(hit)


# ------------------------------------------------------------------------------ publishing


def publish(ctx: PageContext, image_params: Mapping[str, str]) -> None:
    """This run's view: into the URL (store and image identity) and for the page."""
    st.session_state[_K_CONTEXT] = ctx
    want = {P_STORE: ctx.store_param, P_SAMPLE: None, P_IMAGE: None, **image_params}
    params = st.query_params
    for name, value in want.items():
        if value is None:
            if name in params:
                del params[name]
        elif params.get(name) != value:
            params[name] = value


def page_context() -> PageContext:
    """This run's store and query image (an empty context before the sidebar has run)."""
    return st.session_state.get(_K_CONTEXT) or PageContext()


def url_param(name: str) -> str | None:
    """A page's own URL parameter (e.g. `unit`), None when absent."""
    if name in VIEW_PARAMS:
        raise ValueError(f"{name} is a view parameter: read it from page_context()")
    return st.query_params.get(name)


def set_url_param(name: str, value: str | None) -> None:
    """Set (or with None remove) a page's own URL parameter, so a copied URL reopens it."""
    if name in VIEW_PARAMS:
        raise ValueError(f"{name} is a view parameter, written by publish()")
    if value is None:
        if name in st.query_params:
            del st.query_params[name]
    elif st.query_params.get(name) != value:
        st.query_params[name] = value
