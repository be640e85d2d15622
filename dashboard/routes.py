"""The dashboard's pages: one registry of url paths, titles, icons and sections, in the order a
user works (Overview, Heads, the five analyses, Ablation), and links that keep the view.

A page is the script `dashboard/views/<url_path>.py`, served at `/<url_path>`; its URL carries
the view (`?store=NAME&sample=…|image=…`, see `dashboard.state`) and any parameters of its own,
e.g. a per-head page at `/head?store=demo&unit=L7H3`. Adding a page = one `Route` here + its
script. The folder must not be called `pages/`: Streamlit would then run a page's file directly
(without the entrypoint, so without sidebar or store) when a cold server is opened at its URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from dashboard import state

VIEWS = Path(__file__).resolve().parent / "views"


@dataclass(frozen=True)
class Route:
    """One page: served at `/url_path` from `views/<url_path>.py`."""

    url_path: str
    title: str
    icon: str
    section: str

    @property
    def script(self) -> Path:
        return VIEWS / f"{self.url_path}.py"


ROUTES: tuple[Route, ...] = (
    Route("overview", "Overview", ":material/monitoring:", "Model"),
    Route("heads", "Heads", ":material/table_view:", "Model"),
    Route("property_neighbours", "Property neighbours", ":material/category:", "Analyses"),
    Route("topic_segmentation", "Topic segmentation", ":material/blur_on:", "Analyses"),
    Route("contrastive_segmentation", "Contrastive segmentation", ":material/compare:", "Analyses"),
    Route("head_image_neighbours", "Head image neighbours", ":material/photo_library:", "Analyses"),
    Route("head_text_neighbours", "Head text neighbours", ":material/text_fields:", "Analyses"),
    Route("head", "Head", ":material/neurology:", "Model"),  # one head: /head?unit=L7H3
    Route("neurons", "Neurons", ":material/hub:", "Model"),  # one neuron: /neurons?unit=L5N12
    Route("ablation", "Ablation", ":material/science:", "Causal tests"),
)


def route(url_path: str) -> Route:
    """The route of a url path; KeyError naming the valid ones."""
    for r in ROUTES:
        if r.url_path == url_path:
            return r
    raise KeyError(f"no page {url_path!r}; pages: {', '.join(r.url_path for r in ROUTES)}")


def navigation(home) -> dict[str, list]:
    """`st.navigation`'s sections: Home (the default page, `home` a callable), then ROUTES.
    Every page is always registered, so a page's URL works whether or not a store is open."""
    sections: dict[str, list] = {"": [st.Page(home, title="Home", icon=":material/home:",
                                              url_path="home", default=True)]}  # fmt: skip
    for r in ROUTES:
        sections.setdefault(r.section, []).append(
            st.Page(str(r.script), title=r.title, icon=r.icon, url_path=r.url_path)
        )
    return sections


def link_params(ctx: state.PageContext, **params: str) -> dict[str, str]:
    """Query parameters of a link to another page showing the same store: `store` (when one
    is open) plus the page's own `params` (e.g. `unit="L7H3"`)."""
    out = {state.P_STORE: ctx.store_param} if ctx.store_param else {}
    return {**out, **{k: str(v) for k, v in params.items()}}


def href(url_path: str, params: Mapping[str, str]) -> str:
    """A relative URL of a page with parameters (for markdown links and tests)."""
    from urllib.parse import urlencode

    route(url_path)
    return f"./{url_path}" + (f"?{urlencode(dict(params))}" if params else "")


def page_link(ctx: state.PageContext, url_path: str, label: str | None = None, **params: str):
    """`st.page_link` to a registered page, keeping the current store in its URL."""
    r = route(url_path)
    st.page_link(
        str(r.script), label=label or r.title, icon=r.icon, query_params=link_params(ctx, **params)
    )
