"""Every page opened by its own URL on a freshly started server (a shared link, a bookmark, a
reload after a restart) shows the store picker and the page's results, and the navigation names
pages by their titles; a copied URL reopens the same view, also after a reload."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ARGS, CHROMIUM, RESULTS, RESULTS_SHOWN, SETTLED, serve

pytestmark = [pytest.mark.e2e, pytest.mark.demo, pytest.mark.slow]

PAGES = [  # (url path, title, what must be visible): the order a user works in
    ("overview", "Overview", "chart"),
    ("heads", "Heads", "table"),
    ("head", "Head", "images"),
    ("neurons", "Neurons", "table"),
    ("property_neighbours", "Property neighbours", "images"),
    ("topic_segmentation", "Topic segmentation", "images"),
    ("contrastive_segmentation", "Contrastive segmentation", "images"),
    ("head_image_neighbours", "Head image neighbours", "images"),
    ("head_text_neighbours", "Head text neighbours", "images"),
    ("ablation", "Ablation", "table"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(tmp_path_factory) as s:
        yield s


def _no_exception(page) -> None:
    exc = page.locator("[data-testid='stException']")
    assert exc.count() == 0, exc.first.inner_text()


def _open(browser, url: str):
    """A new browser context (no cookies, no session) at `url`, the script run finished."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = ctx.new_page()
    page.goto(url, wait_until="domcontentloaded")
    return ctx, page


def _settle(page) -> None:
    page.wait_for_timeout(300)
    page.wait_for_function(SETTLED, timeout=120_000)
    page.wait_for_timeout(300)


def test_every_page_opened_cold_by_its_url(server):
    from playwright.sync_api import sync_playwright

    RESULTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            for path, title, expect in PAGES:  # the first request this server sees is /overview
                ctx, page = _open(browser, f"{server.url}/{path}")
                page.locator("h1").filter(has_text=title).first.wait_for(timeout=60_000)
                side = page.locator("[data-testid='stSidebar']")
                # the store picker and its store's summary, whatever page was opened first
                side.get_by_text("Interpreted", exact=False).first.wait_for(timeout=60_000)
                page.wait_for_function(RESULTS_SHOWN, arg=2, timeout=120_000)
                _settle(page)
                _no_exception(page)
                page.screenshot(path=str(RESULTS / f"cold-{path}.png"), full_page=True)
                main = page.locator("[data-testid='stMain']")
                if expect == "images":
                    shown = main.locator("img").evaluate_all(
                        "els => els.filter(i => i.complete && i.naturalWidth > 0).length"
                    )
                    assert shown >= 2, f"/{path}: no results, only its title"
                elif expect == "table":
                    assert main.locator("[data-testid='stDataFrame']").count() >= 1, path
                else:
                    assert main.locator("[data-testid='stVegaLiteChart']").count() >= 1, path
                # the navigation names pages by title, in the order a user works
                links = side.locator("[data-testid='stSidebarNavLink']").all_inner_texts()
                names = [t.strip().splitlines()[-1].strip() for t in links]
                assert names == ["Home"] + [t for _, t, _ in PAGES], names
                assert "store=fixture" in page.url  # the URL now names the store
                ctx.close()
        finally:
            browser.close()


def test_a_copied_url_reopens_the_view_after_a_reload(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            url = f"{server.url}/head_image_neighbours?store=fixture&image=7"
            ctx, page = _open(browser, url)
            side = page.locator("[data-testid='stSidebar']")
            main = page.locator("[data-testid='stMain']")
            for attempt in ("opened", "reloaded"):
                side.get_by_text("stored image #7", exact=False).first.wait_for(timeout=60_000)
                page.wait_for_function(RESULTS_SHOWN, arg=4, timeout=120_000)
                _settle(page)
                _no_exception(page)
                assert main.get_by_text("stored image #7", exact=False).count() >= 1, attempt
                assert "image=7" in page.url and "store=fixture" in page.url, attempt
                if attempt == "opened":
                    page.reload(wait_until="domcontentloaded")
            # navigating keeps the view in the URL
            side.get_by_role("link", name="Property neighbours").click()
            page.locator("h1").filter(has_text="Property neighbours").first.wait_for()
            page.wait_for_function(RESULTS_SHOWN, arg=4, timeout=120_000)
            _settle(page)
            page.wait_for_function("() => location.search.includes('image=7')", timeout=30_000)
            ctx.close()
        finally:
            browser.close()
