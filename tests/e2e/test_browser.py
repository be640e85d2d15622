"""Real-browser end-to-end test: the dashboard served headless, driven by Debian's Chromium.

Starts `streamlit run dashboard/Home.py` on 127.0.0.1 with a free port over the fixture store,
uploads an image, visits every page through the navigation, asserts visible results and saves
screenshots to test-results/. Skipped only when /usr/bin/chromium is absent outside CI.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ARGS, CHROMIUM, RESULTS, ROOT, serve

pytestmark = [pytest.mark.e2e, pytest.mark.demo, pytest.mark.slow]

PAGES = [  # (navigation link text, what must be visible), in the navigation's order
    ("Overview", "chart"),
    ("Heads", "table"),
    ("Property neighbours", "images"),
    ("Topic segmentation", "images"),
    ("Contrastive segmentation", "images"),
    ("Head image neighbours", "images"),
    ("Head text neighbours", "images"),
    ("Ablation", "table"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(tmp_path_factory) as s:
        yield s.url


def _settle(page, timeout_ms: int = 120_000) -> None:
    """Wait until the app has finished running the script."""
    page.wait_for_timeout(300)
    page.wait_for_function(  # no "running" widget and no element left faded from the last run
        """() => !document.querySelector('[data-testid="stStatusWidget"]') &&
               !document.querySelector('[data-stale="true"]')""",
        timeout=timeout_ms,
    )
    page.wait_for_timeout(300)


def _no_exception(page) -> None:
    assert page.locator("[data-testid='stException']").count() == 0, page.locator(
        "[data-testid='stException']"
    ).first.inner_text()


def _rendered_images(page) -> int:
    """Images in the main area that actually decoded (naturalWidth > 0)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('[data-testid="stMain"] img')]
               .filter(i => i.complete && i.naturalWidth > 0).length"""
    )


def test_dashboard_in_chromium(server):
    from playwright.sync_api import sync_playwright

    RESULTS.mkdir(exist_ok=True)
    sample = sorted((ROOT / "dashboard" / "samples").glob("*.png"))[0]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1700})
            page.goto(server, wait_until="domcontentloaded")
            page.get_by_text("CLIP-InterpreT", exact=True).first.wait_for(timeout=60_000)
            side = page.locator("[data-testid='stSidebar']")
            side.get_by_text("the model's centre crop").wait_for(timeout=60_000)  # sample shown
            page.get_by_text("Heads stored").wait_for(timeout=60_000)  # the store's summary
            _settle(page)
            _no_exception(page)
            page.screenshot(path=str(RESULTS / "00-home.png"), full_page=True)
            assert page.locator("[data-testid='stMetric']").count() == 4

            # upload an image through the sidebar's file uploader
            # The first click on Streamlit's react-aria radio is swallowed in headless Chromium
            # (it only focuses the group): click until the option is checked.
            upload = side.locator("[data-testid='stRadioOption']").filter(has_text="Upload")
            for _ in range(4):
                upload.click()
                page.wait_for_timeout(700)
                if upload.locator("input").is_checked():
                    break
            assert upload.locator("input").is_checked()
            _settle(page)
            side.locator("input[type='file']").set_input_files(str(sample))
            side.get_by_text("the model's centre crop").wait_for(timeout=60_000)
            _settle(page)
            assert side.locator("[data-testid='stAlert']").count() == 0

            for i, (name, expect) in enumerate(PAGES, start=1):
                side.get_by_role("link", name=name).click()
                page.locator("h1").filter(has_text=name).first.wait_for(timeout=60_000)
                if expect == "images":  # wait for the analysis to render (or fail visibly)
                    page.wait_for_function(
                        """() => document.querySelector('[data-testid="stException"]') ||
                           [...document.querySelectorAll('[data-testid="stMain"] img')]
                           .filter(i => i.complete && i.naturalWidth > 0).length >= 2""",
                        timeout=120_000,
                    )
                _settle(page)
                _no_exception(page)
                shot = RESULTS / f"{i:02d}-{name.lower().replace(' ', '-')}.png"
                page.screenshot(path=str(shot), full_page=True)
                main = page.locator("[data-testid='stMain']")
                if expect == "images":
                    assert _rendered_images(page) >= 2, f"{name}: no rendered images"
                    assert (
                        main.locator("[data-testid='stAlert']")
                        .filter(has_text="Pick a sample")
                        .count()
                        == 0
                    ), f"{name}: the uploaded image was lost"
                elif expect == "table":
                    grid = main.locator("[data-testid='stDataFrame']")
                    grid.first.wait_for(timeout=30_000)
                    assert grid.first.bounding_box()["height"] > 60, "heads table is empty"
                else:
                    main.locator("[data-testid='stVegaLiteChart']").first.wait_for(timeout=30_000)
            # the Neurons page on the upload: the neurons nearest a typed text segment it
            side.get_by_role("link", name="Neurons").click()
            page.locator("h1").filter(has_text="Neurons").first.wait_for(timeout=60_000)
            _settle(page)
            seg = page.get_by_placeholder("e.g. a red shape").nth(1)  # search first, then this
            seg.fill("a red shape")
            seg.press("Enter")
            page.get_by_text("The mean of their per-patch maps").first.wait_for(timeout=120_000)
            _settle(page)
            _no_exception(page)
            page.screenshot(path=str(RESULTS / "10-neurons-upload.png"), full_page=True)
            assert _rendered_images(page) >= 2, "Neurons: no segmentation of the upload"
            main = page.locator("[data-testid='stMain']")
            assert (
                main.locator("[data-testid='stAlert']").filter(has_text="Pick a sample").count()
                == 0
            )
            # a bad upload: one clear message, no traceback
            side.locator("input[type='file']").set_input_files(
                files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}]
            )
            side.locator("[data-testid='stAlert']").filter(
                has_text="cannot use this upload"
            ).first.wait_for(timeout=60_000)
            _settle(page)
            _no_exception(page)
            page.screenshot(path=str(RESULTS / "09-bad-upload.png"), full_page=True)
        finally:
            browser.close()
