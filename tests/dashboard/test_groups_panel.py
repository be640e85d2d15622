"""AppTest of the Ablation page's group panel (dashboard/groups_panel.py) on the fixture store:
group accuracies of the ablation shown, "Find spurious heads", and its one-click ablation."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import ROOT, tree_digest

pytestmark = [pytest.mark.dashboard, pytest.mark.demo, pytest.mark.slow]


def test_group_chart_finder_and_one_click_ablation(store_env, monkeypatch):
    artifacts, store, _ = store_env
    before = tree_digest(store)
    monkeypatch.setenv("CLIP_INTERPRET_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("CLIP_INTERPRET_STORE", raising=False)
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("views/ablation.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(s.value.startswith("Groups: shape by background") for s in at.subheader)
    metrics = {m.label: float(m.value) for m in at.metric}
    assert 0 <= metrics["worst-group before"] <= metrics["mean before"] <= 1
    assert len(at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")) >= 2
    next(c for c in at.checkbox if c.label == "Find spurious heads").check().run()
    assert not at.exception, [e.value for e in at.exception]
    show = [c for c in at.checkbox if c.label == "Show this ablation"]
    if not show:  # a model without a shortcut may have nothing to repair
        assert any("No head raises" in i.value for i in at.info)
        return
    repair = next(m.value for m in at.markdown if m.value.startswith("Repair `"))
    spec = repair.split("`")[1]
    show[0].check().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(f"Spec: `{spec}`" in c.value for c in at.caption)
    show = next(c for c in at.checkbox if c.label == "Show this ablation")
    show.uncheck().run()
    assert not any(f"Spec: `{spec}`" in c.value for c in at.caption)
    assert tree_digest(store) == before  # the page writes nothing
