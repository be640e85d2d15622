"""Dashboard plumbing shared by every page: cached handles and the sidebar widgets.

Cached once per process (``st.cache_resource``): open stores (read-only), loaded models, one
per-head matrix per (store version, layer, head) read from Zarr, and one decomposition per
(store version, image hash). No math here: every analysis is in ``engine.core.analysis``.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run dashboard/Home.py` puts only dashboard/ on the path
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import streamlit as st  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from engine.core import analysis  # noqa: E402
from engine.core.layers import head_name  # noqa: E402,F401  (pages use common.head_name)
from engine.errors import UserError  # noqa: E402

SAMPLES = Path(__file__).resolve().parent / "samples"
BUILD_COMMANDS = (
    "make demo  # sets up .venv, builds artifacts/demo on first use, opens the dashboard",
    "python -m engine demo-store  # builds (and interprets) artifacts/demo",
)
DISPLAY_SIZE = 384  # side of the square crop the heatmaps are drawn on
OTHER_PATH = "another folder…"


def artifacts_root() -> Path:
    """Where stores are listed: $CLIP_INTERPRET_ARTIFACTS or <repo>/artifacts."""
    return Path(os.environ.get("CLIP_INTERPRET_ARTIFACTS", ROOT / "artifacts"))


# ------------------------------------------------------------------------------------ stores


def list_store_paths() -> list[str]:
    """Every store under the artifacts folder, as paths (may be empty); `demo` first."""
    root = artifacts_root()
    if not root.is_dir():
        return []
    paths = _list_store_paths(str(root))
    return sorted(paths, key=lambda p: (Path(p).name != "demo", p))


@st.cache_data(show_spinner=False, ttl=15)  # listing opens every store: not on every rerun
def _list_store_paths(root: str) -> list[str]:
    from engine.store import list_stores

    out = []
    for s in list_stores(root):
        path = s.get("path") if isinstance(s, dict) else getattr(s, "path", s)
        out.append(str(path))
    return out


def store_key(path: str) -> str:
    """The store version a path points at (stores publish each version in a new folder)."""
    return os.path.realpath(path)


@st.cache_resource(show_spinner=False, max_entries=8)
def _open(key: str):
    from engine.store import open_store

    return open_store(key)


def open_store(path: str):
    """The store at `path`, opened read-only and cached per version; UserError if unusable."""
    if not path or not Path(path).exists():
        raise UserError(f"no store at {path!r}")
    try:
        return _open(store_key(path))
    except UserError:
        raise
    except Exception as e:  # a folder that is not a store, or a broken one
        raise UserError(f"cannot open the store at {path}: {str(e).splitlines()[0][:200]}") from e


def info(store) -> dict:
    i = store.info
    return dict(i) if not isinstance(i, dict) else i


def store_layers(store) -> list[int]:
    return [int(x) for x in info(store)["layers"]]


def store_heads(store) -> list[tuple[int, int]]:
    n_heads = int(info(store)["n_heads"])
    return [(l, h) for l in store_layers(store) for h in range(n_heads)]


def current_store():
    """The store picked in the sidebar (None when there is none)."""
    path = st.session_state.get("store_path")
    if not path:
        return None
    try:
        return open_store(path)
    except UserError:
        return None


def table(store, name: str) -> pd.DataFrame:
    """A DuckDB table of the store as a DataFrame (empty when absent)."""
    try:
        return store.query(f"SELECT * FROM {name}")
    except Exception:
        return pd.DataFrame()


def interpreted(store) -> bool:
    return bool(getattr(store, "interpreted", False))


# ------------------------------------------------------------------------------------ models


@st.cache_resource(show_spinner=False, max_entries=4)
def _model(spec: str, random_weights: bool):
    from engine.model import load_model, vision_weights

    lm = load_model(spec, device="cpu", random_weights=random_weights)
    return lm, vision_weights(lm)


def _model_of(store):
    i = info(store)
    return _model(i["model_spec"], bool(i.get("random_weights", False)))


def model_for(store):
    """(LoadedModel, ViTWeights) of the store's model, loaded once per process. When it cannot
    be loaded (e.g. pretrained weights not on this machine) the page says why and stops."""
    with st.spinner(f"Loading model {info(store)['model_spec']}…"):
        try:
            return _model_of(store)
        except UserError as e:
            st.error(
                f"{e}. Live analyses need the model; the store's own images still work "
                "where no new decomposition is needed (pick one **From the store**)."
            )
            st.stop()


@st.cache_data(show_spinner=False, max_entries=256)
def _text_embedding(key: str, texts: tuple[str, ...]) -> np.ndarray:
    from engine.model import encode_text

    lm, _ = _model_of(_open(key))
    return encode_text(lm, list(texts)).numpy()  # [text, d_embed]


def text_embedding(store, texts: list[str]) -> np.ndarray:
    """Unit-norm text embeddings ``[text, d_embed]`` from the store's model (cached)."""
    model_for(store)
    return _text_embedding(store_key(store_path(store)), tuple(texts))


def store_path(store) -> str:
    """The version folder the store was opened at (its cache key)."""
    return str(store.path)


def display_path() -> str:
    """The store path as the user picked it (for commands shown on the page)."""
    return str(st.session_state.get("store_path") or "artifacts/demo")


# ------------------------------------------------------------------------- per-head matrices


@st.cache_resource(show_spinner=False, max_entries=48)
def _bank(key: str, layer: int, head: int) -> analysis.HeadContributions:
    store = _open(key)
    layers = store_layers(store)
    if layer not in layers or not 0 <= head < int(info(store)["n_heads"]):
        raise UserError(f"{head_name(layer, head)} is not in this store (layers {layers})")
    # read the fp16 column straight from Zarr (one inner chunk per shard), converted once here
    return analysis.HeadContributions.from_head_out(
        store.head_out_array[:, layers.index(layer), head, :]
    )


def head_bank(store, layer: int, head: int) -> analysis.HeadContributions:
    """One head's stored contributions over all images, read from Zarr once per process."""
    return _bank(store_key(store_path(store)), int(layer), int(head))


def head_banks(store, heads: list[tuple[int, int]]) -> list[analysis.HeadContributions]:
    """Several heads, with a progress bar when any must be read from disk."""
    if len(heads) <= 1:
        return [head_bank(store, l, h) for l, h in heads]
    bar = st.progress(0.0, text="Reading per-head matrices…")
    out = []
    for i, (l, h) in enumerate(heads):
        out.append(head_bank(store, l, h))
        bar.progress((i + 1) / len(heads), text=f"Read {head_name(l, h)}")
    bar.empty()
    return out


@st.cache_data(show_spinner=False, max_entries=64)
def _thumbs(key: str, ids: tuple[int, ...]) -> np.ndarray:
    return np.asarray(_open(key).thumbnails(list(ids)))


def thumbnails(store, ids) -> np.ndarray:
    """uint8 ``[image, T, T, 3]`` thumbnails of stored images."""
    return _thumbs(store_key(store_path(store)), tuple(int(i) for i in ids))


# ------------------------------------------------------------------------------- query image


@dataclass(frozen=True)
class QueryImage:
    """The image every analysis works on. ``store_index``: its row when picked from the store."""

    image: Image.Image
    sha: str
    label: str
    store_index: int | None = None
    notes: tuple[str, ...] = ()

    def crop(self, size: int = DISPLAY_SIZE) -> np.ndarray:
        """The square centre crop the model sees, for drawing maps on: uint8 [size, size, 3]."""
        fitted = ImageOps.fit(self.image, (size, size), Image.Resampling.BICUBIC)
        return np.asarray(fitted.convert("RGB"), dtype=np.uint8)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sample_paths() -> list[Path]:
    return sorted(SAMPLES.glob("*.png"))


def conversion_notes(data: bytes) -> tuple[str, ...]:
    """What decoding changed about an (already accepted) upload, read from its header."""
    notes = []
    try:
        with Image.open(io.BytesIO(data)) as im:
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"animated ({im.n_frames} frames): the first frame is analysed")
            mode = im.mode
            if "A" in mode or (mode == "P" and "transparency" in im.info):
                notes.append("transparency composited on white")
            elif mode == "CMYK":
                notes.append("CMYK converted to RGB")
            elif mode.startswith("I") or mode == "F":
                notes.append(f"{mode} (high bit depth) scaled to 8-bit RGB")
            elif mode in ("L", "1", "P", "LA"):
                notes.append(f"mode {mode} converted to RGB")
    except Exception:  # the decoder already accepted it; notes are best effort
        pass
    return tuple(notes)


def query_from_bytes(data: bytes, label: str) -> QueryImage:
    """Decode an upload through engine.sources.imageio; UserError with one clear reason if unusable."""
    from engine.sources.imageio import load_upload

    image = load_upload(data)
    return QueryImage(image, _sha(data), label, notes=conversion_notes(data))


def query_from_store(store, index: int) -> QueryImage:
    """A stored image: its source file when still readable, else its thumbnail."""
    images = store.images()
    row = images.iloc[int(index)]
    path = str(row.get("path", ""))
    if path and Path(path).is_file():
        try:
            return QueryImage(
                query_from_bytes(Path(path).read_bytes(), path).image,
                f"store:{store_key(store_path(store))}:{index}",
                f"stored image #{index}",
                int(index),
            )
        except UserError:
            pass
    thumb = thumbnails(store, [int(index)])[0]
    return QueryImage(
        Image.fromarray(thumb),
        f"store:{store_key(store_path(store))}:{index}",
        f"stored image #{index} (thumbnail)",
        int(index),
    )


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


# -------------------------------------------------------------------------- decompositions


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

    store = _open(key)
    lm, w = _model_of(store)
    layers = store_layers(store)
    pixels = lm.preprocess(_image.convert("RGB"))[None]  # [image=1, 3, H, W]
    cap = capture(lm, pixels, layers)
    dec = decompose(w, cap, layers)
    return ImageAnalysis(
        head_out=dec.head_out[0].float().numpy(),
        output=dec.output[0].float().numpy(),
        layers=list(dec.layers),
        capture=cap,
    )


def analyse(store, q: QueryImage) -> ImageAnalysis:
    """The query image's decomposition, computed once per (store version, image)."""
    model_for(store)
    with st.spinner("Decomposing the image…"):
        return _analyse(store_key(store_path(store)), q.sha, q.image)


def query_head_out(store, q: QueryImage, heads: list[tuple[int, int]]) -> np.ndarray:
    """The query's contributions of `heads` -> [head, d_embed]: stored when the image is from
    the store (exactly what the ranking compares against), else from the live decomposition."""
    if q.store_index is not None:
        return np.stack([head_bank(store, l, h).row(q.store_index) for l, h in heads])
    a = analyse(store, q)
    pos = {l: i for i, l in enumerate(a.layers)}
    return np.stack([a.head_out[pos[l], h] for l, h in heads])


@st.cache_data(show_spinner=False, max_entries=64)
def _maps(key: str, sha: str, layers: tuple[int, ...], direction: bytes, _q) -> np.ndarray:
    import torch

    from engine.core.decompose import patch_maps

    store = _open(key)
    _, w = _model_of(store)
    a = _analyse(key, sha, _q.image)
    d = torch.from_numpy(np.frombuffer(direction, dtype=np.float32).copy())
    return patch_maps(w, a.capture, 0, list(layers), None, d).numpy()  # [layer, head, grid, grid]


def maps_for(store, q: QueryImage, direction: np.ndarray) -> np.ndarray:
    """Per-patch maps ``[layer, head, grid, grid]`` of every stored head along `direction`."""
    analyse(store, q)
    with st.spinner("Computing per-patch maps…"):
        return _maps(
            store_key(store_path(store)),
            q.sha,
            tuple(store_layers(store)),
            np.asarray(direction, dtype=np.float32).tobytes(),
            q,
        )


# ------------------------------------------------------------------------------ store tables


def head_labels(store) -> dict[tuple[int, int], str]:
    """(layer, head) -> label, from the store's interpretation (empty if not run)."""
    df = table(store, "head_labels")
    if df.empty:
        return {}
    return {(int(r.layer), int(r.head)): str(r.label) for r in df.itertuples()}


# ------------------------------------------------------------------------ reference figures

# The paper's Tables 1 and 2 (integer head counts over 48 or 64 heads, last four layers), as
# published; see /work/shared/reference/README.md. Data, shown beside the computed scores.
PAPER_SCORES = pd.DataFrame(
    [
        ("ViT-B-32 OpenAI", "ViT-B-32/openai", 21, 21, 48),
        ("ViT-B-32 DataComp", "ViT-B-32/datacomp_m_s128m_b4k", 25, 7, 48),
        ("ViT-B-16 OpenAI", "ViT-B-16/openai", 24, 17, 48),
        ("ViT-B-16 LAION-2B", "ViT-B-16/laion2b_s34b_b88k", 26, 8, 48),
        ("ViT-L-14 OpenAI", "ViT-L-14/openai", 23, 29, 64),
        ("ViT-L-14 LAION-2B", "ViT-L-14/laion2b_s32b_b82k", 22, 36, 64),
    ],
    columns=["model", "model_spec", "entanglement_heads", "association_heads", "heads"],
)
PAPER_SCORES["entanglement"] = PAPER_SCORES["entanglement_heads"] / PAPER_SCORES["heads"]
PAPER_SCORES["association"] = PAPER_SCORES["association_heads"] / PAPER_SCORES["heads"]


def paper_model(store) -> tuple[str, str] | None:
    """(arch, pretrained tag) when the store's model is one of the paper's six, else None."""
    spec = str(info(store).get("model_spec", ""))
    if info(store).get("random_weights") or "/" not in spec or ":" in spec:
        return None
    arch, tag = spec.split("/", 1)
    return (arch, tag) if spec in set(PAPER_SCORES["model_spec"]) else None


def reference_labels(store) -> dict[tuple[int, int], str]:
    """Published labels of the paper's demo for this store's model (empty if none)."""
    pm = paper_model(store)
    if pm is None:
        return {}
    from engine.sources.banks import reference_labels as ref

    df = ref(*pm)
    if df is None:
        return {}
    return {(int(r.layer), int(r.head)): str(r.label) for r in df.itertuples()}


def reference_properties(store) -> dict[str, list[tuple[int, int]]]:
    """The paper demo's property -> heads lists for this store's model (empty if none)."""
    pm = paper_model(store)
    if pm is None:
        return {}
    from engine.sources.banks import reference_property_heads

    df = reference_property_heads(*pm)
    if df is None:
        return {}
    out: dict[str, list[tuple[int, int]]] = {}
    for r in df.itertuples():
        out.setdefault(str(r.property), []).append((int(r.layer), int(r.head)))
    return out


def textspan_texts(store, layer: int, head: int) -> pd.DataFrame:
    """TextSpan texts of one head, best first: columns rank, text, variance_removed."""
    df = table(store, "textspan")
    if df.empty:
        return df
    sel = df[(df["layer"] == layer) & (df["head"] == head)]
    return sel.sort_values("rank")[["rank", "text", "variance_removed"]].reset_index(drop=True)
