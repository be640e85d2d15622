"""AppTest of the Ablation page on the dashboard fixture store."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from engine.core.layers import head_name
from tests.dashboard.conftest import ROOT, relabelled_copy, tree_digest

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


def _spec(at: AppTest) -> str:
    caps = [c.value for c in at.caption if c.value.startswith("Spec: `")]
    assert caps, "the page shows the spec it runs"
    return caps[0].split("`")[1]


def test_default_is_a_property_never_mixed_nor_a_non_label(store_env, monkeypatch, tmp_path):
    """`mixed` and the non-labels sort before most properties: the default skips them; with no
    property at all the page starts from one head, not `label:mixed` (every head)."""
    from engine.core.labels import MIXED, NON_LABELS

    _, store, _ = store_env
    some = tmp_path / "some"
    relabelled_copy(
        store, some / "fixture", lambda l, h: "shape" if h == 0 else (MIXED, *NON_LABELS)[h % 3]
    )
    at = _app(monkeypatch, some)
    assert _spec(at) == "label:shape"
    none = tmp_path / "none"
    relabelled_copy(store, none / "fixture", lambda l, h: NON_LABELS[0] if h == 1 else MIXED)
    at = _app(monkeypatch, none)
    spec = _spec(at)
    assert "label:" not in spec and re.fullmatch(r"L\d+H\d+", spec)
    assert at.dataframe[0].value["after"].notna().all()


def test_baseline_note_when_the_draws_are_the_ablated_heads(store_env, monkeypatch):
    """Every head of the chosen layers ablated: the random baseline is the ablation itself, and
    the page says so (the note of the session's result, as the CLI prints it)."""
    artifacts, store, _ = store_env
    at = _app(monkeypatch, artifacts)
    at.radio[0].set_value("Layers' heads").run()  # default range: every stored layer
    assert not at.exception
    assert _spec(at).startswith("layers:")
    warn = " ".join(w.value for w in at.warning)
    assert "random baseline cannot differ from the ablated set" in warn
    from engine.session import StoreSession

    with StoreSession.open(store) as s:
        a = s.ablate(_spec(at), random=2)
        assert a.baseline is not None and a.baseline.status == "identical"
        assert a.baseline_note in warn
        one = s.ablate(head_name(*s.heads()[0]), random=2)
        assert one.baseline.status == "ok" and one.baseline_note == ""
        assert s.ablate(_spec(at), random=0).baseline is None
    at.radio[0].set_value("Heads").run()  # one head: the baseline is sound, no warning
    assert not at.exception and not at.warning


def test_ablated_heads_link_to_their_pages(store_env, monkeypatch):
    """The heads an ablation removes are linked to their Head pages (other terms are not)."""
    artifacts, store, _ = store_env
    at = _app(monkeypatch, artifacts)
    at.radio[0].set_value("Heads").run()
    assert not at.exception, [e.value for e in at.exception]
    to_head = [x.proto.label for x in at.get("page_link") if x.proto.page.endswith("head")]
    assert len(to_head) == 1 and re.fullmatch(r"L\d+H\d+'s page", to_head[0]), to_head
    at.radio[0].set_value("All but the last K layers' heads").run()
    next(s for s in at.slider if s.label == "K").set_value(1).run()  # the earlier layers' heads
    assert not at.exception, [e.value for e in at.exception]
    linked = re.findall(r"\[(L\d+H\d+)\]\(\./head\?", " ".join(m.value for m in at.markdown))
    assert linked and all(re.fullmatch(r"L\d+H\d+", x) for x in linked)


# ---- neurons (engine.session.neuron_ablation through the page) ----


def _neurons_mode(at: AppTest, kind: str | None = None) -> AppTest:
    at.radio[0].set_value("Neurons").run()
    assert not at.exception, [e.value for e in at.exception]
    if kind is not None:
        box = at.selectbox(key="ablate_neuron_kind")
        box.set_value(next(o for o in box.options if o.startswith(kind))).run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def test_neurons_before_after_random_links_and_store_untouched(store_env, monkeypatch):
    """The significant neurons of the built layer: the session's numbers (before, after, the
    random-neuron baseline), each ablated neuron linked to its unit page, nothing written."""
    from engine.session import StoreSession

    artifacts, store, _ = store_env
    before = tree_digest(store)
    at = _neurons_mode(_app(monkeypatch, artifacts))
    spec = _spec(at)
    assert re.fullmatch(r"neurons:L\d+:significant", spec)
    shown = at.dataframe[0].value.set_index("task")
    with StoreSession.open(store) as s:
        want = s.ablate_neurons(spec, random=10)
    assert len(shown) == len(want.tasks)
    for t in want.tasks:
        row = shown.loc[t.task]
        assert (row["before"], row["after"]) == (t.before, t.after)
        assert row["random mean"] == pytest.approx(t.random_mean)
    assert any(f"{want.n_ablated} neurons" in m.value for m in at.markdown)
    linked = re.findall(r"\[(L\d+N\d+)\]\(\./head\?store=[^&]+&unit=(L\d+N\d+)\)",
                        " ".join(m.value for m in at.markdown))  # fmt: skip
    assert [a for a, _ in linked] == want.units[: len(linked)] and all(a == b for a, b in linked)
    assert len(linked) == min(want.n_ablated, 200)
    assert not at.warning  # 10 % of a layer: the draws are other neurons
    assert tree_digest(store) == before


def test_one_listed_neuron_links_its_page_and_every_neuron_warns(store_env, monkeypatch):
    artifacts, store, _ = store_env
    at = _neurons_mode(_app(monkeypatch, artifacts), "a list")
    unit = at.text_input(key="ablate_neuron_list").value  # the layer's most significant neuron
    assert _spec(at) == unit and re.fullmatch(r"L\d+N\d+", unit)
    to_page = [x for x in at.get("page_link") if x.proto.page.endswith("head")]
    assert [x.proto.label for x in to_page] == [f"{unit}'s page"]
    assert (
        f"unit={unit}" in to_page[0].proto.query_string
    )  # /head?store=…&unit=L6N12 (the unit page)
    at = _neurons_mode(at, "all")
    warn = " ".join(w.value for w in at.warning)
    assert "random baseline cannot differ from the ablated set" in warn


def test_neuron_bad_input_is_one_message(store_env, monkeypatch):
    """A neuron of an unbuilt layer, or neurons mixed with heads: one message naming what to run
    (or why), nothing stored changes."""
    artifacts, store, _ = store_env
    before = tree_digest(store)
    at = _neurons_mode(_app(monkeypatch, artifacts), "a list")
    at.text_input(key="ablate_neuron_list").set_value("L0N3").run()
    assert not at.exception and len(at.error) == 1
    msg = at.error[0].value
    assert "were not built" in msg and "--neurons" in msg and "python -m engine" in msg
    at.text_input(key="ablate_neuron_list").set_value("L0N3, L0H1").run()
    assert not at.exception and "mixes neurons" in at.error[0].value
    assert tree_digest(store) == before


def test_neurons_not_described_says_how(tmp_path, monkeypatch):
    from tests.dashboard.conftest import raw_fixture

    raw_root, _, _ = raw_fixture(tmp_path.parent.parent)
    at = _neurons_mode(_app(monkeypatch, raw_root))
    msg = at.info[0].value if at.info else ""
    assert "python -m engine interpret" in msg and "--neurons" in msg, msg
