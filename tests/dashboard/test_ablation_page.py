"""AppTest of the Ablation page on the dashboard fixture store."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.dashboard.conftest import ROOT, tree_digest

pytestmark = [pytest.mark.dashboard, pytest.mark.demo, pytest.mark.slow]


def _app(monkeypatch, artifacts) -> AppTest:
    monkeypatch.setenv("CLIP_INTERPRET_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("CLIP_INTERPRET_STORE", raising=False)
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=300)
    at.run()
    at.switch_page("views/ablation.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_ablation_page_modes_table_and_store_untouched(store_env, monkeypatch):
    artifacts, store, _ = store_env
    before = tree_digest(store)
    at = _app(monkeypatch, artifacts)
    table = at.dataframe[0].value
    assert set(table["task"]) == {"shape", "colour", "position", "texture", "size", "background"}
    assert ((table["before"] >= 0) & (table["before"] <= 1)).all()
    assert any("Spec: `label:" in c.value for c in at.caption)
    # all but the last K layers' heads: a different spec, a different result
    at.radio[0].set_value("All but the last K layers' heads").run()
    assert not at.exception
    assert any("all-but-last:" in c.value for c in at.caption)
    after = at.dataframe[0].value
    assert (after["after"] != table["after"]).any() and (after["before"] == table["before"]).all()
    # a head list; no random baseline
    at.radio[0].set_value("Heads").run()
    at.slider[0].set_value(0).run()
    assert not at.exception and at.dataframe[0].value["random mean"].isna().all()
    assert tree_digest(store) == before  # the page writes nothing


def test_only_among_the_late_heads_prefixes_the_spec(store_env, monkeypatch):
    artifacts, _, _ = store_env
    at = _app(monkeypatch, artifacts)
    plain = at.dataframe[0].value
    at.checkbox[0].check().run()
    assert not at.exception
    assert any("Spec: `all-but-last:" in c.value and "+label:" in c.value for c in at.caption)
    within = at.dataframe[0].value
    assert (within["before"] == plain["before"]).all()  # the unablated model is the same
    assert (within["after"] <= plain["after"] + 1e-9).all() and (
        within["after"] != plain["after"]
    ).any()
