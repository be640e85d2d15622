"""CLIP-InterpreT dashboard: `streamlit run dashboard/Home.py` (from the repository root).

The entrypoint: page config, the sidebar (store and image pickers) and `st.navigation` routing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the dashboard's modules from any cwd

import os  # noqa: E402

import query  # noqa: E402
import settings  # noqa: E402
import stores  # noqa: E402
import streamlit as st  # noqa: E402
import tables  # noqa: E402
import uploads  # noqa: E402

from engine.errors import UserError  # noqa: E402

st.set_page_config(page_title="CLIP-InterpreT", page_icon=":material/search:", layout="wide")


def sidebar_store():
    """Store picker; returns the open store or None. Keeps the choice in session state."""
    st.sidebar.subheader("Store")
    paths = stores.list_store_paths()
    options = paths + [settings.OTHER_PATH]
    wanted = os.environ.get("CLIP_INTERPRET_STORE")
    index = 0
    if wanted:
        index = next((i for i, p in enumerate(paths) if stores.same_store(p, wanted)), len(paths))
    choice = st.sidebar.selectbox(
        "Store",
        options,
        index=index,
        key="store_choice",
        format_func=lambda p: Path(p).name if p != settings.OTHER_PATH else p,
        label_visibility="collapsed",
    )
    if choice == settings.OTHER_PATH:
        path = st.sidebar.text_input(
            "Store folder", value=wanted or "", key="store_typed", placeholder="artifacts/demo"
        ).strip()
    else:
        path = choice
    if not path:
        st.session_state["store_path"] = None
        return None
    try:
        store = stores.open_store(path)
    except UserError as e:
        st.sidebar.error(str(e))
        st.session_state["store_path"] = None
        return None
    st.session_state["store_path"] = path
    i = store.info
    st.sidebar.markdown(
        f"**Model** `{i.get('model_spec', '?')}`"
        + (" (random weights)" if i.get("random_weights") else "")
        + f"  \n**Images** {int(i.get('n_images', 0)):,}"
        + f"  \n**Heads** layers {stores.store_layers(store)} × {i.get('n_heads')} heads"
        + f"  \n**Built** {str(i.get('built_at', '?'))[:19]}"
        + f"  \n**Run** `{str(i.get('run_id', '?'))[:12]}` · code `{i.get('code_version', '?')}`"
        + f"  \n**Images from** {i.get('images_source', '?')}"
        + f"  \n**Interpreted** {'yes' if tables.interpreted(store) else 'no — run `python -m engine interpret --store ' + path + '`'}"  # noqa: E501
    )
    return store


def sidebar_image(store) -> None:
    """Image picker (sample, stored image or upload) -> session_state query / query_error."""
    st.sidebar.subheader("Image")
    query.set_query(None)
    sources = ["Sample", "From the store", "Upload"]
    source = st.sidebar.radio(
        "Image source", sources, key="image_source", horizontal=True, label_visibility="collapsed"
    )
    try:
        if source == "Sample":
            samples = uploads.sample_paths()
            path = st.sidebar.selectbox(
                "Sample", samples, key="sample", format_func=lambda p: p.stem.replace("_", " ")
            )
            if path is not None:
                st.session_state["query"] = uploads.query_from_bytes(
                    Path(path).read_bytes(), f"sample {Path(path).stem}"
                )
        elif source == "From the store":
            n = int(store.info.get("n_images", 0)) if store is not None else 0
            if n == 0:
                st.sidebar.info("Pick a store first.")
                return
            if st.session_state.get("store_image", 0) > n - 1:  # a smaller store was picked
                st.session_state["store_image"] = n - 1
            idx = st.sidebar.number_input(
                "Stored image #", min_value=0, max_value=n - 1, step=1, key="store_image"
            )
            st.session_state["query"] = query.query_from_store(store, int(idx))
        else:
            up = st.sidebar.file_uploader(
                "Upload an image",
                type=None,
                key="upload",
                help="Any common format (PNG, JPEG, WebP, GIF, TIFF, BMP). Size limit from "
                ".streamlit/config.toml.",
            )
            if up is not None:
                st.session_state["query"] = uploads.query_from_bytes(up.getvalue(), up.name)
    except UserError as e:
        query.set_query(None, str(e))
        st.sidebar.error(str(e))
        return
    q = st.session_state["query"]
    if q is not None and q.notes:
        st.sidebar.info("Upload converted: " + "; ".join(q.notes))
    if q is not None:
        st.sidebar.image(q.crop(192), caption=f"{q.label} (the model's centre crop)", width=192)


def home() -> None:
    st.title("CLIP-InterpreT")
    st.markdown(
        "Interpretability workbench for CLIP vision transformers: every attention head's direct "
        "contribution to the image embedding, labelled, scored and searchable."
    )
    store = stores.current_store()
    if store is None:
        st.warning("No store is open yet.")
        st.markdown(
            "Build the demo store (the bundled demo model over the procedural demo world) with "
            "either command, from the repository root:"
        )
        for cmd in settings.BUILD_COMMANDS:
            st.code(cmd, language="bash")
        st.markdown(
            "Any other model: `python -m engine build --model MODEL --images FOLDER "
            "--store artifacts/NAME`, then `python -m engine interpret --store artifacts/NAME`. "
            "Stores under `artifacts/` appear in the sidebar; any other folder can be typed there."
        )
        return
    i = store.info
    c = st.columns(4)
    c[0].metric("Model", str(i.get("model_spec")))
    c[1].metric("Images", f"{int(i.get('n_images', 0)):,}")
    c[2].metric("Heads stored", len(stores.store_heads(store)))
    c[3].metric("Interpreted", "yes" if tables.interpreted(store) else "no")
    st.markdown(
        """
**Pages**
- **Overview** — entanglement and association scores, per layer, across stores, with the paper's
  published figures.
- **Heads** — every head's label, TextSpan texts, reference label and ground truth, with its
  causal evidence (ablation effect, segmentation scores); export.
- **Ablation** — zero-shot accuracy before and after mean-ablating heads (by label, list, layers,
  or all but the last K layers), against random heads.
- **Property neighbours** — images of the store most alike the chosen image in one property.
- **Topic segmentation** / **Contrastive segmentation** — where in the image heads see a text
  (or one text more than another).
- **Head image neighbours** / **Head text neighbours** — what single heads retrieve.

Pick the image in the sidebar: a bundled sample, any stored image, or your own upload.
"""
    )


store = sidebar_store()
if store is not None:
    sidebar_image(store)

home_page = st.Page(home, title="Home", icon=":material/home:", url_path="home", default=True)
if store is None:
    pages = [home_page]
else:
    pages = {
        "": [home_page],
        "Model": [
            st.Page("pages/overview.py", title="Overview", icon=":material/monitoring:"),
            st.Page("pages/heads.py", title="Heads", icon=":material/table_view:"),
            st.Page("pages/ablation.py", title="Ablation", icon=":material/science:"),
        ],
        "Analyses": [
            st.Page(
                "pages/property_neighbours.py",
                title="Property neighbours",
                icon=":material/category:",
            ),
            st.Page(
                "pages/topic_segmentation.py", title="Topic segmentation", icon=":material/blur_on:"
            ),
            st.Page(
                "pages/contrastive_segmentation.py",
                title="Contrastive segmentation",
                icon=":material/compare:",
            ),
            st.Page(
                "pages/head_image_neighbours.py",
                title="Head image neighbours",
                icon=":material/photo_library:",
            ),
            st.Page(
                "pages/head_text_neighbours.py",
                title="Head text neighbours",
                icon=":material/text_fields:",
            ),
        ],
    }
st.navigation(pages).run()
