"""A SigLIP store browsed in the dashboard: every page opens on a tiny SigLIP-shaped store, built
and interpreted, without an exception, shows results, and says how large the pool-MLP term is
(read from the store)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from dashboard.routes import ROUTES
from tests.dashboard.conftest import ROOT

pytestmark = [pytest.mark.dashboard, pytest.mark.slow]

HOME = str(ROOT / "dashboard" / "Home.py")


@pytest.fixture(scope="module")
def siglip_artifacts(tmp_path_factory):
    from engine.pipeline.build import build_store
    from engine.pipeline.build_plan import BuildParams

    root = tmp_path_factory.mktemp("siglip-artifacts")
    params = BuildParams(model="ClipInterpretTinySigLIP", images="synthetic:12",
                         store=str(root / "sig"), layers="all", random_weights=True,
                         workers=1, progress=False)  # fmt: skip
    build_store(params)
    from engine.cli import main as cli_main

    assert cli_main(["interpret", "--store", str(root / "sig"), "--no-progress"]) == 0
    return root


@pytest.mark.parametrize("route", ROUTES, ids=[r.url_path for r in ROUTES])
def test_every_page_opens_on_a_siglip_store_with_the_pool_notice(
    monkeypatch, siglip_artifacts, route
):
    from engine.store import open_store

    monkeypatch.setenv("CLIP_INTERPRET_ARTIFACTS", str(siglip_artifacts))
    monkeypatch.delenv("CLIP_INTERPRET_STORE", raising=False)
    at = AppTest.from_file(HOME, default_timeout=300)
    at.query_params["store"] = "sig"
    at.switch_page(f"views/{route.url_path}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    with open_store(siglip_artifacts / "sig") as r:
        import numpy as np

        out, mlp = r.output(), r.array("pool_mlp").astype(np.float32)
        want = float((np.linalg.norm(mlp, axis=1) / np.linalg.norm(out, axis=1)).mean())
    main = at.main
    shown = sum(len(main.get(k)) for k in ("image", "arrow_data_frame", "vega_lite_chart"))
    assert not at.error, [e.value for e in at.error]
    # ablation waits for a choice of what to ablate; SigLIP stores have no neurons (the lens is
    # refused for attention-pooled towers): the Neurons page says so in one line
    if route.url_path == "neurons":
        assert any("built without neurons" in i.value for i in at.info)
    elif route.url_path != "ablation":
        assert shown + len(main.dataframe) + len(main.metric) > 0, f"/{route.url_path}: empty"
    notes = [i.value for i in at.info if "pool_mlp" in i.value]
    assert len(notes) == 1 and f"= {want:.2f} on average" in notes[0]
