"""The Neurons page (`/neurons?store=NAME&unit=L6N12`): the table by significance, search by text,
the URL round trip, a neuron's map on a stored query image, and the stores without neurons."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine.pipeline.neurons import StoredNeurons
from engine.session import StoreSession
from engine.session.neurons import neuron_name, parse_neuron
from tests.dashboard.conftest import ROOT

pytestmark = [pytest.mark.dashboard, pytest.mark.demo, pytest.mark.slow]

HOME = str(ROOT / "dashboard" / "Home.py")


def _open(monkeypatch, artifacts, params: dict) -> AppTest:
    monkeypatch.setenv("CLIP_INTERPRET_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("CLIP_INTERPRET_STORE", raising=False)
    at = AppTest.from_file(HOME, default_timeout=300)
    for k, v in params.items():
        at.query_params[k] = v
    at.switch_page("views/neurons.py")
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
    first = table.unit.iloc[0]  # the most significant neuron is shown by default
    assert at.header[0].value.startswith(f"{first} · ") and _url_unit(at) == first
    shown = at.dataframe[0].value
    assert list(shown.unit) == list(table.unit) and "significance" in shown.columns
    at.text_input(key="neurons_text").set_value("a red shape").run()
    assert not at.exception
    found = at.dataframe[0].value
    assert list(found.unit) == list(hits.unit) and "cosine" in found.columns
    # a shared URL reopens that neuron (a new session on a cold server)
    other = table.unit.iloc[len(table) // 2]
    at = _open(monkeypatch, root, {"store": store.name, "unit": other})
    assert at.header[0].value.startswith(f"{other} · ")
    at = _open(monkeypatch, root, {"store": store.name, "unit": "L99N0"})
    assert at.warning and "'L99N0' is not a described neuron" in at.warning[0].value


def test_neuron_map_on_a_stored_image(monkeypatch, store_env):
    root, store, _ = store_env
    with StoreSession.open(store) as s:
        row = s.neuron_table().iloc[0]
        facts = s.neuron_facts(row.layer, row.neuron)
        image = facts.top_images[0]
        k = StoredNeurons(s.reader).k(facts.layer, image, image + 1)[0, facts.neuron]
    name = neuron_name(facts.layer, facts.neuron)
    at = _open(monkeypatch, root, {"store": store.name, "unit": name, "image": str(image)})
    at.toggle(key="neuron_q").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    # the live effect norm of its top image is the stored one (int8 frame coordinates)
    assert float(metrics["Effect norm"]) == pytest.approx(float((k**2).sum() ** 0.5), rel=2e-2)
    # neuron segmentation for a typed text names the neurons it averaged
    at.text_input(key="neurons_seg").set_value("a red shape").run()
    assert not at.exception, [e.value for e in at.exception]
    with StoreSession.open(store) as s:
        used = s.search_neurons("a red shape", k=10).unit
    assert any(", ".join(used) in c.value for c in at.caption)


def test_store_without_described_neurons_says_how(monkeypatch, tmp_path):
    from tests.dashboard.conftest import raw_fixture

    raw_root, raw_store, _ = raw_fixture(tmp_path.parent.parent)
    at = _open(monkeypatch, raw_root, {"store": raw_store.name})
    # built without neurons, or built with them and not described: one line naming the command
    msg = at.info[0].value if at.info else ""
    assert "python -m engine" in msg and "--neurons" in msg, msg


def test_recorded_ablation_drops(monkeypatch, store_env, tmp_path, capsys):
    """`ablate --ablate L6N12` recorded in a copy of the store: that neuron's page shows the run's
    drop per task (the reader's rows); a neuron no run removed says how to record one."""
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
    at = _open(monkeypatch, root, {"store": "fixture", "unit": first})
    frames = [d.value for d in at.dataframe if "spec" in d.value.columns]
    assert len(frames) == 1
    shown = frames[0]
    with StoreSession.open(root / "fixture") as s:
        want = s.neuron_ablation_drops(*parse_neuron(first))
    assert list(shown.spec) == [first] * len(want) and (shown.n_ablated == 1).all()
    assert list(shown["drop"]) == list(want["drop"]) and list(shown.task) == list(want.task)
    assert set(want.run_id) == {run["run_id"]} and len(want) == len(run["tasks"])
    at = _open(monkeypatch, root, {"store": "fixture", "unit": other})
    assert not [d for d in at.dataframe if "spec" in d.value.columns]
    assert any(f"No recorded ablation removed {other}" in c.value for c in at.caption)
