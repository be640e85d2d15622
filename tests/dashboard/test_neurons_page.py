"""The Neurons page (`/neurons?store=NAME`): the table by significance, search by text, a row opening
the neuron's unit page (`/head?unit=L6N12`, tests/dashboard/test_head_page.py), segmentation, and
the stores without neurons."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine.session import StoreSession
from engine.session.neurons import parse_neuron
from tests.dashboard.conftest import ROOT

pytestmark = [pytest.mark.dashboard, pytest.mark.demo, pytest.mark.slow]

HOME = str(ROOT / "dashboard" / "Home.py")
UNIT_PAGE = "views/head.py"


def _open(monkeypatch, artifacts, params: dict, page: str = "views/neurons.py") -> AppTest:
    monkeypatch.setenv("CLIP_INTERPRET_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("CLIP_INTERPRET_STORE", raising=False)
    at = AppTest.from_file(HOME, default_timeout=300)
    for k, v in params.items():
        at.query_params[k] = v
    at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _url_unit(at: AppTest) -> str:
    u = at.query_params["unit"]
    return u[0] if isinstance(u, list) else u


def test_table_search_and_url(monkeypatch, store_env):
    root, store, _ = store_env
    with StoreSession.open(store) as s:
        table = s.neuron_table()
        hits = s.search_neurons("a red shape", k=25)
    at = _open(monkeypatch, root, {"store": store.name})
    shown = at.dataframe[0].value
    assert list(shown.unit) == list(table.unit) and "significance" in shown.columns
    at.text_input(key="neurons_text").set_value("a red shape").run()
    assert not at.exception
    found = at.dataframe[0].value
    assert list(found.unit) == list(hits.unit) and "cosine" in found.columns
    # an older per-neuron URL offers that neuron's unit page (one page for heads and neurons)
    other = table.unit.iloc[len(table) // 2]
    at = _open(monkeypatch, root, {"store": store.name, "unit": other})
    links = [(x.proto.page, x.proto.label, x.proto.query_string) for x in at.get("page_link")]
    assert any(p.endswith("head") and lab == f"{other}'s page" and f"unit={other}" in qs
               for p, lab, qs in links), links  # fmt: skip


def test_a_row_of_the_table_opens_the_unit_page(monkeypatch, store_env):
    """The page turns a selected row into the unit page of that neuron (`open_unit_named`)."""
    from dashboard import unit_page

    root, store, _ = store_env
    with StoreSession.open(store) as s:
        table = s.neuron_table()
    opened = []
    monkeypatch.setattr(unit_page, "open_unit_named", lambda ctx, name: opened.append(name))
    monkeypatch.setattr(unit_page, "clicked_unit", lambda event, frame: frame.unit.iloc[2])
    _open(monkeypatch, root, {"store": store.name})
    assert opened == [table.unit.iloc[2]]


def test_neuron_segmentation_links_the_neurons_it_used(monkeypatch, store_env):
    root, store, _ = store_env
    with StoreSession.open(store) as s:
        image = s.neuron_facts(*s.neuron_table()[["layer", "neuron"]].iloc[0]).top_images[0]
        used = s.search_neurons("a red shape", k=10).unit
    at = _open(monkeypatch, root, {"store": store.name, "image": str(image)})
    at.text_input(key="neurons_seg").set_value("a red shape").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(", ".join(used) in c.value for c in at.caption)
    text = " ".join(m.value for m in at.markdown)
    assert all(f"[{u}](./head?store={store.name}&unit={u})" in text for u in used), text[:300]


def test_store_without_described_neurons_says_how(monkeypatch, tmp_path):
    from tests.dashboard.conftest import raw_fixture

    raw_root, raw_store, _ = raw_fixture(tmp_path.parent.parent)
    at = _open(monkeypatch, raw_root, {"store": raw_store.name})
    # built without neurons, or built with them and not described: one line naming the command
    msg = at.info[0].value if at.info else ""
    assert "python -m engine" in msg and "--neurons" in msg, msg


def test_recorded_ablation_drops(monkeypatch, store_env, tmp_path, capsys):
    """`ablate --ablate L6N12` recorded in a copy of the store: that neuron's unit page
    (`/head?unit=L6N12`) shows the run's drop per task (the reader's rows) and its drop as a
    metric; a neuron no run removed says how to record one."""
    import json

    from engine.cli import main as cli_main
    from tests.dashboard.conftest import _copy_store

    _, store, _ = store_env
    root = tmp_path / "arts"
    _copy_store(store, root / "fixture")
    with StoreSession.open(root / "fixture") as s:
        table = s.neuron_table()
    first, other = table.unit.iloc[0], table.unit.iloc[1]
    argv = ["ablate", "--store", str(root / "fixture"), "--random", "0", "--json", "--ablate"]
    assert cli_main([*argv, first]) == 0
    run = json.loads(capsys.readouterr().out)
    at = _open(monkeypatch, root, {"store": "fixture", "unit": first}, UNIT_PAGE)
    frames = [d.value for d in at.dataframe if "spec" in d.value.columns]
    assert len(frames) == 1
    shown = frames[0]
    with StoreSession.open(root / "fixture") as s:
        want = s.neuron_ablation_drops(*parse_neuron(first))
    assert list(shown.spec) == [first] * len(want) and (shown.n_ablated == 1).all()
    assert list(shown["drop"]) == list(want["drop"]) and list(shown.task) == list(want.task)
    assert set(want.run_id) == {run["run_id"]} and len(want) == len(run["tasks"])
    best = want.sort_values("drop", ascending=False).iloc[0]
    assert any(m.label == f"Ablation drop ({best.task})" for m in at.metric)
    at = _open(monkeypatch, root, {"store": "fixture", "unit": other}, UNIT_PAGE)
    assert not [d for d in at.dataframe if "spec" in d.value.columns]
    assert any(f"No recorded ablation removed {other}" in c.value for c in at.caption)
