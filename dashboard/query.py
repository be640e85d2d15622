"""The query image: what every analysis page works on, kept in the session state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import settings
import streamlit as st
from PIL import Image, ImageOps

from engine.errors import UserError


@dataclass(frozen=True)
class QueryImage:
    """The image every analysis works on. ``store_index``: its row when picked from the store."""

    image: Image.Image
    sha: str
    label: str
    store_index: int | None = None
    notes: tuple[str, ...] = ()

    def crop(self, size: int = settings.DISPLAY_SIZE) -> np.ndarray:
        """The square centre crop the model sees, for drawing maps on: uint8 [size, size, 3]."""
        fitted = ImageOps.fit(self.image, (size, size), Image.Resampling.BICUBIC)
        return np.asarray(fitted.convert("RGB"), dtype=np.uint8)


def query_from_store(store, index: int) -> QueryImage:
    """A stored image: its source file when still readable, else its thumbnail."""
    import head_cache
    import stores
    import uploads

    row = store.images().iloc[int(index)]
    sha = f"store:{stores.version_key(store)}:{index}"
    path = str(row["path"] or "")
    if path and Path(path).is_file():
        try:
            image = uploads.query_from_bytes(Path(path).read_bytes(), path).image
            return QueryImage(image, sha, f"stored image #{index}", int(index))
        except UserError:
            pass
    thumb = head_cache.thumbnails(store, [int(index)])[0]
    return QueryImage(Image.fromarray(thumb), sha, f"stored image #{index} (thumbnail)", int(index))


def set_query(q: QueryImage | None, error: str | None = None) -> None:
    st.session_state["query"] = q
    st.session_state["query_error"] = error


def current_query() -> QueryImage | None:
    return st.session_state.get("query")


def require_query() -> QueryImage:
    """The query image, or stop the page with a clear message."""
    q = current_query()
    if q is None:
        err = st.session_state.get("query_error")
        if err:
            st.error(err)
        st.info("Pick a sample, a stored image or upload one in the sidebar (**Image**).")
        st.stop()
    return q
