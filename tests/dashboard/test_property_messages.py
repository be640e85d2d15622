"""Property neighbours' message matches the store's state: never interpreted (test_pages), or
interpreted with every head `mixed` (no property heads)."""

from __future__ import annotations

import pytest

from tests.dashboard.conftest import relabelled_copy
from tests.dashboard.test_pages import _app, _page

pytestmark = [pytest.mark.dashboard, pytest.mark.demo, pytest.mark.slow]


def test_interpreted_all_mixed_store_says_so(monkeypatch, store_env, tmp_path):
    _, store, interpreted = store_env
    assert interpreted
    root = tmp_path / "artifacts"
    relabelled_copy(store, root / "fixture", lambda l, h: "mixed")
    at = _page(_app(monkeypatch, root), "views/property_neighbours.py")
    assert "Interpreted** yes" in " ".join(m.value for m in at.sidebar.markdown)
    info = " ".join(i.value for i in at.info)
    assert "All heads are `mixed`" in info and "no property heads" in info
    assert "No head labels yet" not in info and "run `python -m engine interpret`" not in info
    assert not [w for w in at.selectbox if w.key == "prop_name"]  # heads chosen by hand
