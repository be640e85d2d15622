"""The entrypoint's work: page config, the URL's view into the sidebar, the sidebar's choices
into the URL and the page context, then `st.navigation` routing (every page, always)."""

from __future__ import annotations

import os

import streamlit as st

from dashboard import routes, settings, sidebar, state, stores, tables, uploads


def home() -> None:
    """The Home page: what the workbench is, how to build a store, the pages."""
    ctx = state.page_context()
    st.title("CLIP-InterpreT")
    st.markdown(
        "Interpretability workbench for CLIP vision transformers: every attention head's direct "
        "contribution to the image embedding, labelled, scored and searchable."
    )
    store = ctx.store
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
    c = st.columns(4)
    c[0].metric("Model", store.model_record.model_spec)
    c[1].metric("Images", f"{store.n_images:,}")
    c[2].metric("Heads stored", len(store.heads()))
    c[3].metric("Interpreted", "yes" if tables.interpreted(store) else "no")
    st.markdown("**Pages**, in the order of a first look (each link keeps this store):")
    for r in routes.ROUTES:
        routes.page_link(ctx, r.url_path)
        st.caption(PAGE_NOTES[r.url_path])
    st.markdown(
        "Pick the image in the sidebar: a bundled sample, any stored image, or your own "
        "upload. Every page's URL names the store and the image (not an upload), so a copied "
        "link reopens the view."
    )


PAGE_NOTES = {
    "overview": "Entanglement and association scores, per layer, across stores, with the paper's "
    "published figures.",
    "heads": "Every head's label, TextSpan texts, reference label and ground truth, with its "
    "causal evidence (ablation effect, segmentation scores); export.",
    "head": "One head's page: its texts, top and bottom stored images with its map over each, "
    "histograms, related heads, a synthesized image; share it by its URL (`unit=L7H3`).",
    "neurons": "MLP neurons through the second-order lens: by significance, searched by text, "
    "one neuron's words, top images and map on the image (`unit=L6N12`).",
    "property_neighbours": "Images of the store most alike the chosen image in one property.",
    "topic_segmentation": "Where in the image heads see a text.",
    "contrastive_segmentation": "Where the image is more one text than another.",
    "head_image_neighbours": "What single heads retrieve for the chosen image.",
    "head_text_neighbours": "What single heads retrieve for a text.",
    "ablation": "Zero-shot accuracy before and after mean-ablating heads (by label, list, "
    "layers, or all but the last K layers), against random heads.",
}


def main() -> None:
    st.set_page_config(page_title="CLIP-InterpreT", page_icon=":material/search:", layout="wide")
    paths = stores.list_store_paths()
    samples = uploads.sample_paths()
    state.seed_from_url(paths, samples, os.environ.get("CLIP_INTERPRET_STORE"))
    picked = sidebar.store_picker(paths)
    ctx = state.PageContext()
    image_params: dict[str, str] = {}
    if picked.store is not None:
        image = sidebar.image_picker(picked.store)
        image_params = image.params
        ctx = state.PageContext(
            store=picked.store,
            store_path=picked.path,
            store_param=state.store_param(picked.path, paths),
            query=image.query,
            query_error=image.error,
            linked=image.linked,
        )
    state.publish(ctx, image_params)
    st.navigation(routes.navigation(home)).run()
