"""Per-head matrices and thumbnails read from the store, cached per (store version, head).

One head's contributions over all images are read straight from Zarr (one inner chunk per
shard) and converted once; pages get them as `analysis.HeadContributions`.
"""

from __future__ import annotations

import numpy as np
import settings  # noqa: F401  (the repository root on sys.path)
import stores
import streamlit as st

from engine.core import analysis
from engine.core.layers import head_name
from engine.errors import UserError


@st.cache_resource(show_spinner=False, max_entries=48)
def _contributions(key: str, layer: int, head: int) -> analysis.HeadContributions:
    store = stores.reader(key)
    layers = stores.store_layers(store)
    if layer not in layers or not 0 <= head < int(store.info["n_heads"]):
        raise UserError(f"{head_name(layer, head)} is not in this store (layers {layers})")
    return analysis.HeadContributions.from_head_out(
        store.head_out_array[:, layers.index(layer), head, :]
    )


def head_contributions(store, layer: int, head: int) -> analysis.HeadContributions:
    """One head's stored contributions over all images, read from Zarr once per process."""
    return _contributions(stores.version_key(store), int(layer), int(head))


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
