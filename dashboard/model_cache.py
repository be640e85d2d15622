"""The store's model and what it computes live: text embeddings, the query image's
decomposition and per-patch maps, each cached once per process (no math here: it is in
`engine.core`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st
from PIL import Image

from dashboard import head_cache, stores
from engine.errors import UserError


@st.cache_resource(show_spinner=False, max_entries=4)
def _model(spec: str, random_weights: bool):
    from engine.model import load_model, vision_weights

    lm = load_model(spec, device="cpu", random_weights=random_weights)
    return lm, vision_weights(lm)


def _model_of(store):
    return _model(store.info["model_spec"], bool(store.info.get("random_weights", False)))


def model_for(store):
    """(LoadedModel, ViTWeights) of the store's model, loaded once per process. When it cannot
    be loaded (e.g. pretrained weights not on this machine) the page says why and stops."""
    with st.spinner(f"Loading model {store.info['model_spec']}…"):
        try:
            return _model_of(store)
        except UserError as e:
            st.error(
                f"{e}. Live analyses need the model; the store's own images still work "
                "where no new decomposition is needed (pick one **From the store**)."
            )
            st.stop()


@st.cache_data(show_spinner=False, max_entries=256)
def _text_embedding(spec: str, random_weights: bool, texts: tuple[str, ...]) -> np.ndarray:
    from engine.model import encode_text

    lm, _ = _model(spec, random_weights)
    return encode_text(lm, list(texts)).numpy()  # [text, d_embed]


def text_embedding(store, texts: list[str]) -> np.ndarray:
    """Unit-norm text embeddings ``[text, d_embed]`` from the store's model (cached)."""
    model_for(store)
    i = store.info
    return _text_embedding(i["model_spec"], bool(i.get("random_weights", False)), tuple(texts))


@dataclass
class ImageAnalysis:
    """One decomposition of the query image, shared by every analysis page.

    head_out: [layer, head, d_embed] (stored layers); output: [d_embed]; capture for maps."""

    head_out: np.ndarray
    output: np.ndarray
    layers: list[int]
    capture: object


@st.cache_resource(show_spinner=False, max_entries=16)
def _analyse(key: str, sha: str, _image: Image.Image) -> ImageAnalysis:
    from engine.core.decompose import decompose
    from engine.model import capture

    store = stores.reader(key)
    lm, w = _model_of(store)
    layers = stores.store_layers(store)
    pixels = lm.preprocess(_image.convert("RGB"))[None]  # [image=1, 3, H, W]
    cap = capture(lm, pixels, layers)
    dec = decompose(w, cap, layers)
    return ImageAnalysis(
        head_out=dec.head_out[0].float().numpy(),
        output=dec.output[0].float().numpy(),
        layers=list(dec.layers),
        capture=cap,
    )


def analyse(store, q) -> ImageAnalysis:
    """The query image's decomposition, computed once per (store version, image)."""
    model_for(store)
    with st.spinner("Decomposing the image…"):
        return _analyse(stores.version_key(store), q.sha, q.image)


def query_head_out(store, q, heads: list[tuple[int, int]]) -> np.ndarray:
    """The query's contributions of `heads` -> [head, d_embed]: stored when the image is from
    the store (exactly what the ranking compares against), else from the live decomposition."""
    if q.store_index is not None:
        return np.stack(
            [head_cache.head_contributions(store, l, h).row(q.store_index) for l, h in heads]
        )
    a = analyse(store, q)
    pos = {l: i for i, l in enumerate(a.layers)}
    return np.stack([a.head_out[pos[l], h] for l, h in heads])


@st.cache_data(show_spinner=False, max_entries=64)
def _maps(key: str, sha: str, layers: tuple[int, ...], direction: bytes, _q) -> np.ndarray:
    import torch

    from engine.core.decompose import patch_maps

    _, w = _model_of(stores.reader(key))
    a = _analyse(key, sha, _q.image)
    d = torch.from_numpy(np.frombuffer(direction, dtype=np.float32).copy())
    return patch_maps(w, a.capture, 0, list(layers), None, d).numpy()  # [layer, head, grid, grid]


def maps_for(store, q, direction: np.ndarray) -> np.ndarray:
    """Per-patch maps ``[layer, head, grid, grid]`` of every stored head along `direction`."""
    analyse(store, q)
    with st.spinner("Computing per-patch maps…"):
        return _maps(
            stores.version_key(store),
            q.sha,
            tuple(stores.store_layers(store)),
            np.asarray(direction, dtype=np.float32).tobytes(),
            q,
        )
