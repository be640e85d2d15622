"""A neuron's unit page in Chromium: `/head?store=fixture&unit=L6N12` opened cold by its URL shows
the neuron's images with their maps, its histograms and words; a row of the Neurons table opens
that page."""

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


def test_neuron_page_cold_url_and_table_row(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    _, store, _ = build_fixture(tmp_path_factory.getbasetemp())
    with open_store(store) as r:
        neurons = ut.unit_summary(r, "neuron")
        unit = neurons.unit.iloc[len(neurons) // 3]
        k = int(neurons.k.iloc[0])
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
            assert main.get_by_text("Words (sparse code of its direction)").count() == 1
            page.screenshot(path=str(RESULTS / "neuron-cold.png"), full_page=True)
            # the Neurons table: selecting a row opens that neuron's unit page
            page.goto(f"{server.url}/neurons?store=fixture", wait_until="domcontentloaded")
            page.locator("h1").filter(has_text="Neurons").first.wait_for(timeout=120_000)
            _settle(page)
            grid = main.locator("[data-testid='stDataFrame']").first
            grid.scroll_into_view_if_needed()
            box = grid.bounding_box()
            # the row-selection column, second data row (the header row is ~35 px)
            page.mouse.click(box["x"] + 15, box["y"] + 35 + 35 * 1.5)
            page.wait_for_url(re.compile(r"/head\?.*unit=L\d+N\d+"), timeout=120_000)
            page.locator("h2").filter(has_text=re.compile(r"^L\d+N\d+ · ")).first.wait_for(
                timeout=120_000
            )
            ctx.close()
        finally:
            browser.close()
