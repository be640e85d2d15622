"""Per-head matrices and thumbnails read from the store, cached per (store version, head).

One head's contributions over all images are read straight from Zarr in the head's own
coordinates (`[image, d_head]`, one inner chunk per shard) and converted once to float16 unit rows
plus norms and the head's basis; pages get them as `analysis.HeadContributions`. The cache is
bounded by bytes, not entries (`CLIP_INTERPRET_CACHE_MB`, default
`engine.store.cache.DEFAULT_CACHE_MB`): least recently used heads are evicted, so memory stays
bounded whatever the store's size (a 1,000,000-image ViT-B head is ~132 MB, a 50,000-image one
~6.6 MB).
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import stores
from engine.core import analysis
from engine.core.layers import head_name
from engine.errors import UserError
from engine.store.cache import ByteBudgetCache


@st.cache_resource(show_spinner=False)
def head_cache() -> ByteBudgetCache:
    """The process's per-head cache (one for every session and store version)."""
    return ByteBudgetCache()


def _read(key: str, layer: int, head: int) -> analysis.HeadContributions:
    store = stores.reader(key)
    layers = stores.store_layers(store)
    if layer not in layers or not 0 <= head < int(store.info["n_heads"]):
        raise UserError(f"{head_name(layer, head)} is not in this store (layers {layers})")
    # straight from Zarr, around the reader's float32 cache: float16 unit rows are kept here
    coord = store.coord_array[:, layers.index(layer), head, :]  # [image, d_head] fp16
    return analysis.HeadContributions.from_coords(coord, store.basis(layer, head))


def head_contributions(store, layer: int, head: int) -> analysis.HeadContributions:
    """One head's stored contributions over all images, read from Zarr once while cached."""
    key = stores.version_key(store)
    return head_cache().get((key, int(layer), int(head)), lambda: _read(key, int(layer), int(head)))


def many_head_contributions(
    store, heads: list[tuple[int, int]]
) -> list[analysis.HeadContributions]:
    """Several heads, with a progress bar when there is more than one to read."""
    if len(heads) <= 1:
        return [head_contributions(store, l, h) for l, h in heads]
    bar = st.progress(0.0, text="Reading per-head matrices…")
    out = []
    for i, (l, h) in enumerate(heads):
        out.append(head_contributions(store, l, h))
        bar.progress((i + 1) / len(heads), text=f"Read {head_name(l, h)}")
    bar.empty()
    return out


@st.cache_data(show_spinner=False, max_entries=64)
def _thumbs(key: str, ids: tuple[int, ...]) -> np.ndarray:
    return np.asarray(stores.reader(key).thumbnails(list(ids)))


def thumbnails(store, ids) -> np.ndarray:
    """uint8 ``[image, T, T, 3]`` thumbnails of stored images."""
    return _thumbs(stores.version_key(store), tuple(int(i) for i in ids))
