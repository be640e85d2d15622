"""Links that work: every page opened cold by its URL shows the store and its content, the URL
names the store and the query image (never an upload), a copied URL reopens the same view, and
the navigation stays whatever the store picker shows. Also the named, searchable stored images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from dashboard.routes import ROUTES
from tests.dashboard.conftest import ROOT, raw_fixture

pytestmark = [pytest.mark.dashboard, pytest.mark.demo, pytest.mark.slow]

HOME = str(ROOT / "dashboard" / "Home.py")
SAMPLES = sorted((ROOT / "dashboard" / "samples").glob("*.png"))


def _cold(monkeypatch, artifacts, url_path: str | None = None, **params: str) -> AppTest:
    """A new session opened at /url_path?params (no earlier run in this session)."""
    monkeypatch.setenv("CLIP_INTERPRET_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("CLIP_INTERPRET_STORE", raising=False)
    at = AppTest.from_file(HOME, default_timeout=300)
    for k, v in params.items():
        at.query_params[k] = v
    if url_path:
        at.switch_page(f"views/{url_path}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _content(at: AppTest) -> int:
    """Result elements in the main area: images, tables, charts, metrics."""
    main = at.main
    kinds = ("image", "arrow_data_frame", "vega_lite_chart")
    return sum(len(main.get(k)) for k in kinds) + len(main.dataframe) + len(main.metric)


def _query_label(at: AppTest) -> str:
    imgs = at.sidebar.get("image")
    assert imgs, "the query image is shown in the sidebar"
    return imgs[0].captions[0]


@pytest.mark.parametrize("route", ROUTES, ids=[r.url_path for r in ROUTES])
def test_every_page_opened_cold_by_its_url_shows_the_store_and_results(
    monkeypatch, store_env, route
):
    root, _, _ = store_env
    at = _cold(monkeypatch, root, route.url_path, store="fixture")
    assert [t.value for t in at.title] == [route.title]
    side = " ".join(m.value for m in at.sidebar.markdown)
    assert "**Model** `" in side and "**Images** 200" in side, "the store picker and its store"
    assert not [i for i in at.info if "No store is open" in i.value]
    assert _content(at) > 0, f"/{route.url_path}: only its title"
    assert at.query_params.get("store") == "fixture"


def test_home_links_every_page_keeping_the_store(monkeypatch, store_env):
    root, _, _ = store_env
    at = _cold(monkeypatch, root, None, store="fixture", image="3")
    links = at.get("page_link")
    assert [link.proto.label for link in links] == [r.title for r in ROUTES]
    for link, r in zip(links, ROUTES, strict=True):
        assert link.proto.page.endswith(r.url_path) and link.proto.query_string == "store=fixture"


def test_a_page_url_without_parameters_opens_the_default_store(monkeypatch, store_env):
    root, _, _ = store_env
    at = _cold(monkeypatch, root, "heads")
    assert at.dataframe and len(at.dataframe[0].value) == 64
    assert at.query_params["store"] == "fixture"  # written back: the URL now names it


def test_the_url_carries_store_and_image_and_reopens_the_view(monkeypatch, store_env):
    root, _, _ = store_env
    at = _cold(monkeypatch, root, "property_neighbours", store="fixture", image="7")
    assert _query_label(at).startswith("stored image #7 · ")
    assert dict(at.query_params) == {"store": "fixture", "image": "7"}
    # a sample replaces the image in the URL
    at.sidebar.radio(key="image_source").set_value("Sample").run()
    at.sidebar.selectbox(key="sample").set_value(SAMPLES[2]).run()
    assert dict(at.query_params) == {"store": "fixture", "sample": SAMPLES[2].stem}
    shown = _query_label(at)
    # the copied URL, opened in a new session (tab, reload, another person), shows the same
    again = _cold(monkeypatch, root, "property_neighbours", **dict(at.query_params))
    assert _query_label(again) == shown
    assert [c.value for c in again.caption] == [c.value for c in at.caption]


def test_an_upload_is_not_linked_and_the_page_says_so(monkeypatch, store_env):
    root, _, _ = store_env
    at = _cold(monkeypatch, root, None, store="fixture", sample=SAMPLES[0].stem)
    rgb = np.random.default_rng(3).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    at.sidebar.radio(key="image_source").set_value("Upload").run()
    at.file_uploader(key="upload").upload("mine.png", buf.getvalue(), "image/png").run()
    assert not at.exception
    assert dict(at.query_params) == {"store": "fixture"}
    assert any("not part of the page's link" in c.value for c in at.sidebar.caption)


def test_a_link_to_a_missing_store_says_so(monkeypatch, store_env):
    root, _, _ = store_env
    at = _cold(monkeypatch, root, "heads", store="gone")
    assert at.sidebar.error and "gone" in at.sidebar.error[0].value
    assert any("No store is open" in i.value for i in at.info)


def test_another_folder_keeps_the_navigation(monkeypatch, store_env, tmp_path_factory):
    """Choosing 'another folder…' (nothing typed yet) leaves every page reachable; each says
    where to pick a store instead of vanishing from the navigation."""
    root, _, _ = store_env
    at = _cold(monkeypatch, root)
    at.sidebar.selectbox(key="store_choice").set_value("another folder…").run()
    assert not at.exception
    for route in ROUTES:
        at.switch_page(f"views/{route.url_path}.py").run()
        assert not at.exception, route.url_path
        assert any("No store is open" in i.value for i in at.info), route.url_path
    # a store outside the artifacts folder: typed, opened, and named in the URL by its path
    _, elsewhere, _ = raw_fixture(tmp_path_factory.getbasetemp())
    at.sidebar.text_input(key="store_typed").set_value(str(elsewhere)).run()
    assert at.query_params["store"] == str(elsewhere)
    again = _cold(monkeypatch, root, "heads", **dict(at.query_params))
    assert not again.sidebar.error and len(again.dataframe[0].value) == 64


# --------------------------------------------------------------------- named stored images


def test_stored_images_are_named_and_searchable(monkeypatch, store_env):
    root, store, _ = store_env
    from engine.store import open_store

    with open_store(store) as s:
        factors = s.query("SELECT image_id, factor, value FROM image_factors")
    triangles = set(factors[(factors.factor == "shape") & (factors.value == "triangle")].image_id)
    at = _cold(monkeypatch, root, "head_image_neighbours", store="fixture")
    at.sidebar.radio(key="image_source").set_value("From the store").run()
    at.sidebar.text_input(key="store_image_search").set_value("triangle").run()
    hits = at.sidebar.selectbox(key="store_image_hit")
    assert len(hits.options) == min(50, len(triangles))
    assert all("triangle" in o for o in hits.options)
    pick = sorted(triangles)[3]
    hits.set_value(pick).run()
    assert not at.exception
    assert at.sidebar.number_input(key="store_image").value == pick
    assert at.query_params["image"] == str(pick)
    assert "triangle" in _query_label(at)
    # every neighbour shown carries the world's factors of its image
    caps = [c for img in at.main.get("image") for c in img.captions]
    neighbours = [c for c in caps if c.startswith("#")]
    assert neighbours
    for c in neighbours:
        image_id = int(c.split(" · ")[0][1:])
        assert c.endswith(_caption(factors, image_id)), c


def _caption(factors, image_id: int) -> str:
    order = ["shape", "colour", "position", "texture", "size", "background"]
    row = factors[factors.image_id == image_id].set_index("factor")["value"]
    return ", ".join(row[f] for f in order)
