"""The Head page in Chromium: opened cold by a shared URL it shows the head's images with their
maps, histograms and texts; a click on the Heads grid reaches it."""

from __future__ import annotations

import re

import pytest

from engine.store import open_store
from engine.store import unit_tables as ut
from tests.dashboard.conftest import build_fixture
from tests.e2e.conftest import ARGS, CHROMIUM, RESULTS, SETTLED, serve

pytestmark = [pytest.mark.e2e, pytest.mark.demo, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(tmp_path_factory) as s:
        yield s


def _settle(page) -> None:
    page.wait_for_timeout(300)
    page.wait_for_function(SETTLED, timeout=120_000)
    page.wait_for_timeout(300)


def test_head_page_cold_url_and_grid_click(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    _, store, _ = build_fixture(tmp_path_factory.getbasetemp())
    with open_store(store) as r:
        layer = r.layers[-1]
        k = int(ut.unit_summary(r)["k"].iloc[0])
    unit = f"L{layer}H1"
    RESULTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            ctx = browser.new_context(viewport={"width": 1400, "height": 2400})
            page = ctx.new_page()
            page.goto(f"{server.url}/head?store=fixture&unit={unit}", wait_until="domcontentloaded")
            page.locator("h2").filter(has_text=f"{unit} · ").first.wait_for(timeout=120_000)
            _settle(page)
            assert page.locator("[data-testid='stException']").count() == 0
            main = page.locator("[data-testid='stMain']")
            main.locator("img").last.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            shown = main.locator("img").evaluate_all(
                "els => els.filter(i => i.complete && i.naturalWidth > 0).length"
            )
            assert shown >= 2 * k, f"{shown} images for top and bottom {k}"
            page.wait_for_function(  # histograms (a loaded server may mount a chart late)
                "document.querySelectorAll(\"[data-testid='stMain'] [data-testid='stVegaLiteChart']\").length >= 2",
                timeout=60_000,
            )
            assert main.get_by_text("TextSpan texts").count() == 1
            page.screenshot(path=str(RESULTS / "head-cold.png"), full_page=True)
            # the Heads grid: a click on a cell opens that head's page
            page.goto(f"{server.url}/heads?store=fixture", wait_until="domcontentloaded")
            page.locator("h1").filter(has_text="Heads").first.wait_for(timeout=120_000)
            _settle(page)
            grid = main.locator("[data-testid='stVegaLiteChart']").last
            grid.scroll_into_view_if_needed()
            box = grid.bounding_box()
            page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
            page.wait_for_url(re.compile(r"/head\?.*unit=L\d+H\d+"), timeout=120_000)
            page.locator("h2").filter(has_text=re.compile(r"^L\d+H\d+ · ")).first.wait_for(
                timeout=120_000
            )
            ctx.close()
        finally:
            browser.close()
