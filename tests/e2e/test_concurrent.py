"""Many users at once: eight browser sessions, each on a different page, each uploading a
different image at the same time. Each sees its own image and its own results (no cross-talk
between sessions), no exception; the server's resident memory grows by less than the cache
budget it was started with.

The uploads are exact copies of stored images (the fixture's thumbnails are its pixels), so
each session's results carry a fingerprint: the sidebar flags "stored image #ID", and on the
neighbour pages that image is the top neighbour, with cosine 1.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from tests.dashboard.conftest import build_fixture
from tests.e2e.conftest import ARGS, CHROMIUM, RESULTS, RESULTS_SHOWN, SETTLED, serve

pytestmark = [pytest.mark.e2e, pytest.mark.demo, pytest.mark.slow]

CACHE_MB = 128
PAGES = [
    "overview",
    "heads",
    "property_neighbours",
    "topic_segmentation",
    "contrastive_segmentation",
    "head_image_neighbours",
    "head_text_neighbours",
    "ablation",
]
IMAGE_IDS = [11, 23, 37, 48, 59, 61, 72, 85, 96]  # one per session, the last for the warm-up
NEIGHBOUR_PAGES = {"property_neighbours", "head_image_neighbours"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(tmp_path_factory, CLIP_INTERPRET_CACHE_MB=str(CACHE_MB)) as s:
        yield s


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


async def _session(browser, url: str, path: str, name: str, data: bytes, image_id: int) -> dict:
    """One user: open /path, upload `data`, wait for the results; what the page showed."""
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1100})
    page = await ctx.new_page()
    try:
        await page.goto(f"{url}/{path}?store=fixture", wait_until="domcontentloaded")
        side = page.locator("[data-testid='stSidebar']")
        await side.get_by_text("Interpreted", exact=False).first.wait_for(timeout=120_000)
        await page.wait_for_function(SETTLED, timeout=180_000)
        # the first click on Streamlit's radio can be swallowed headless: click until checked
        upload = side.locator("[data-testid='stRadioOption']").filter(has_text="Upload")
        for _ in range(6):
            await upload.click()
            await page.wait_for_timeout(700)
            if await upload.locator("input").is_checked():
                break
        await page.wait_for_function(SETTLED, timeout=180_000)
        await side.locator("input[type='file']").set_input_files(
            files=[{"name": name, "mimeType": "image/png", "buffer": data}]
        )
        await side.get_by_text(f"stored image #{image_id}", exact=False).first.wait_for(
            timeout=180_000
        )
        await page.wait_for_function(RESULTS_SHOWN, arg=2, timeout=180_000)
        await page.wait_for_timeout(300)
        await page.wait_for_function(SETTLED, timeout=180_000)
        await page.wait_for_timeout(300)
        await page.screenshot(path=str(RESULTS / f"concurrent-{path}.png"), full_page=True)
        main = page.locator("[data-testid='stMain']")
        return {
            "path": path,
            "exceptions": await page.locator("[data-testid='stException']").all_inner_texts(),
            "sidebar": await side.inner_text(),
            "captions": await main.locator("[data-testid='stImageCaption']").all_inner_texts(),
            "title": await page.locator("h1").first.inner_text(),
        }
    finally:
        await ctx.close()


async def _run_all(url: str, jobs, rss, samples: list[float]) -> list[dict]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            warm = jobs[-1]  # one user first: the model and the store's caches are loaded
            await _session(browser, url, *warm)
            samples.append(rss())
            done = False

            async def sample():
                while not done:
                    samples.append(rss())
                    await asyncio.sleep(0.5)

            sampler = asyncio.create_task(sample())
            try:
                return await asyncio.gather(*(_session(browser, url, *j) for j in jobs[:-1]))
            finally:
                done = True
                await sampler
                samples.append(rss())
        finally:
            await browser.close()


def test_eight_sessions_at_once_each_see_their_own_results(server, tmp_path_factory):
    from engine.store import open_store

    RESULTS.mkdir(exist_ok=True)
    _, store, _ = build_fixture(tmp_path_factory.getbasetemp())
    with open_store(store) as s:
        thumbs = s.thumbnails(IMAGE_IDS)
    jobs = [
        (path, f"user{k}-image{i}.png", _png(thumbs[k]), i)
        for k, (path, i) in enumerate(zip(PAGES + ["topic_segmentation"], IMAGE_IDS, strict=True))
    ]
    samples: list[float] = []
    results = asyncio.run(_run_all(server.url, jobs, server.rss_mb, samples))

    titles = {r["path"]: r["title"] for r in results}
    assert len(set(titles.values())) == 8, titles  # eight different pages
    for (path, name, _, image_id), r in zip(jobs, results, strict=False):
        assert r["exceptions"] == [], (path, r["exceptions"])
        side = r["sidebar"]
        assert name in side, (path, "its own upload's name")  # the crop's caption
        assert f"stored image #{image_id} " in side, (path, "its own duplicate flag")
        others = [f"stored image #{i} " for i in IMAGE_IDS if i != image_id]
        assert not [o for o in others if o in side], (path, "another session's image")
        if path in NEIGHBOUR_PAGES:  # its own image is the best neighbour, cosine 1
            ranked = [c for c in r["captions"] if c.startswith("#")]
            assert ranked and ranked[0].startswith(f"#{image_id} · "), (path, ranked[:3])
            assert float(ranked[0].split(" · ")[1]) == pytest.approx(1.0, abs=2e-3)
    warm_rss, peak = samples[0], max(samples)
    assert peak - warm_rss < CACHE_MB, (
        f"server RSS grew {peak - warm_rss:.0f} MB (warm {warm_rss:.0f} MB) beyond the "
        f"{CACHE_MB} MB cache budget"
    )
    print(f"server RSS: warm {warm_rss:.0f} MB, peak {peak:.0f} MB with 8 sessions")
