"""The Head page (`/head?store=NAME&unit=L7H3`): URL round trip, content, reads only tables."""

from __future__ import annotations

import re

import pytest
from streamlit.testing.v1 import AppTest

from engine.core.layers import head_name
from engine.store import open_store, schema
from engine.store import unit_tables as ut
from tests.dashboard.conftest import ROOT

pytestmark = [pytest.mark.dashboard, pytest.mark.demo, pytest.mark.slow]

HOME = str(ROOT / "dashboard" / "Home.py")


def _open(monkeypatch, artifacts, params: dict) -> AppTest:
    """A new session (a new tab on a cold server) opened at /head?params."""
    monkeypatch.setenv("CLIP_INTERPRET_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("CLIP_INTERPRET_STORE", raising=False)
    at = AppTest.from_file(HOME, default_timeout=300)
    for k, v in params.items():
        at.query_params[k] = v
    at.switch_page("views/head.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _shown(at: AppTest) -> str:
    """The head the page shows: its header `L7H3 · label`."""
    return at.header[0].value


@pytest.fixture
def no_contributions(monkeypatch):
    """Reading any contribution array fails: the page must live on the precomputed tables."""
    from engine.store.reader import StoreReader

    def refuse(*a, **k):
        raise AssertionError("the unit page read the contribution arrays")

    monkeypatch.setattr(StoreReader, "coords", refuse)
    monkeypatch.setattr(StoreReader, "head_out", refuse)
    monkeypatch.setattr(StoreReader, "coord_array", property(refuse))
    real_lazy = StoreReader.lazy
    # per-image arrays other than the thumbnails: contributions, neuron effects, embeddings
    per_image = {n for n, a in schema.ARRAYS.items() if a.per_image} - {"thumbnail"}

    def lazy(self, name, *a, **k):
        if name in per_image:
            raise AssertionError(f"the unit page read the per-image array {name!r}")
        return real_lazy(self, name, *a, **k)

    monkeypatch.setattr(StoreReader, "lazy", lazy)


def test_neuron_page_url_round_trip(monkeypatch, store_env, no_contributions):
    """`/head?unit=L6N12` renders the neuron on the same page: label, words, its top and bottom
    images from the unit tables, the histograms; next/previous walk the neurons."""
    root, store, _ = store_env
    with open_store(store) as r:
        neurons = ut.unit_summary(r, "neuron")
        name = neurons.unit.iloc[len(neurons) // 2]
        ex = ut.unit_examples_of(r, name)
        label = r.table("neuron_stats").set_index(["layer", "neuron"]).label
    row = neurons.set_index("unit").loc[name]
    at = _open(monkeypatch, root, {"store": store.name, "unit": name})
    assert at.title[0].value == "Neuron"
    assert _shown(at) == f"{name} · {label.loc[(int(row.layer), int(row.neuron))]}"
    captions = [c for img in at.get("image") for c in img.captions]
    shown = [int(c.split(" · ")[0][1:]) for c in captions if c.startswith("#")]
    assert shown == ex.image_id.tolist() and len(shown) == 2 * int(row.k)
    assert len(at.get("vega_lite_chart")) >= 2  # the two histograms
    metrics = {m.label: m.value for m in at.metric}
    assert (
        "Significance (mean centred norm)" in metrics and metrics["Ablation drop"] == "not recorded"
    )
    assert any(c.value.startswith("Labelled by **offline**") for c in at.caption)
    related = at.dataframe[-1].value
    assert list(related.columns) == ["unit", "cosine"] and name not in set(related.unit)
    at.button(key="head_next").click().run()
    nxt = neurons.unit.iloc[len(neurons) // 2 + 1]
    assert _shown(at).startswith(f"{nxt} · ")
    url = at.query_params["unit"]
    assert (url[0] if isinstance(url, list) else url) == nxt
    again = _open(monkeypatch, root, {"store": store.name, "unit": nxt})
    assert _shown(again) == _shown(at)
    bad = _open(monkeypatch, root, {"store": store.name, "unit": "L99N0"})
    assert bad.warning and "'L99N0' is not a neuron of this store" in bad.warning[0].value
    assert _shown(bad).startswith(f"{neurons.unit.iloc[0]} · ")


def test_neuron_page_on_a_stored_query_image(monkeypatch, store_env):
    """The neuron's live map on its own top image: the effect norm is the stored one and the
    projection the stored example's (int8 frame coordinates: close)."""
    from engine.pipeline.neurons import StoredNeurons

    root, store, _ = store_env
    with open_store(store) as r:
        neurons = ut.unit_summary(r, "neuron")
        name = neurons.unit.iloc[0]
        top = ut.unit_examples_of(r, name).iloc[0]
        row = neurons.iloc[0]
        k = StoredNeurons(r).k(int(row.layer), int(top.image_id), int(top.image_id) + 1)
    at = _open(monkeypatch, root, {"store": store.name, "unit": name,
                                   "image": str(int(top.image_id))})  # fmt: skip
    at.toggle(key="neuron_q").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    norm = float((k[0, int(row.neuron)] ** 2).sum() ** 0.5)
    assert float(metrics["Effect norm"]) == pytest.approx(norm, rel=2e-2)
    assert float(metrics["Projection on the direction"]) == pytest.approx(
        top.projection, rel=2e-2, abs=1e-5
    )


def test_head_page_url_round_trip(monkeypatch, store_env, no_contributions):
    root, store, _ = store_env
    with open_store(store) as r:
        heads = [(l, h) for l in r.layers for h in range(r.n_heads)]
        layer, head = heads[len(heads) // 2]
        ex = ut.unit_examples(r, layer, head)
        k = int(ut.unit_summary(r)["k"].iloc[0])
    name = head_name(layer, head)
    at = _open(monkeypatch, root, {"store": store.name, "unit": name})
    assert _shown(at).startswith(f"{name} · ")
    assert at.query_params["unit"] == [name] or at.query_params["unit"] == name
    # top and bottom images with their maps, captioned with the stored image ids
    captions = [c for img in at.get("image") for c in img.captions]
    shown = [int(c.split(" · ")[0][1:]) for c in captions if c.startswith("#")]
    assert shown == ex.image_id.tolist() and len(shown) == 2 * k
    assert len(at.get("vega_lite_chart")) >= 2  # the two histograms (+ ground truth)
    metrics = {m.label: m.value for m in at.metric}
    assert "Share of embedding variance" in metrics
    # next head: the URL follows, and a new tab on that URL opens the same view
    at.button(key="head_next").click().run()
    nxt = heads[len(heads) // 2 + 1]
    assert _shown(at).startswith(f"{head_name(*nxt)} · ")
    url = {k: at.query_params[k] for k in ("store", "unit")}
    url = {k: v[0] if isinstance(v, list) else v for k, v in url.items()}
    assert url == {"store": store.name, "unit": head_name(*nxt)}
    again = _open(monkeypatch, root, url)
    assert _shown(again) == _shown(at)
    # previous from the first head wraps to the last
    first = _open(monkeypatch, root, {"store": store.name, "unit": head_name(*heads[0])})
    first.button(key="head_prev").click().run()
    assert _shown(first).startswith(f"{head_name(*heads[-1])} · ")


def test_head_page_bad_unit_and_uninterpreted_store(monkeypatch, store_env, tmp_path):
    from tests.dashboard.conftest import raw_fixture

    root, store, _ = store_env
    at = _open(monkeypatch, root, {"store": store.name, "unit": "L99H0"})
    assert at.warning and "'L99H0' is not a head of this store" in at.warning[0].value
    with open_store(store) as r:
        first = head_name(r.layers[0], 0)
    assert _shown(at).startswith(f"{first} · ")
    raw_root, raw_store, _ = raw_fixture(tmp_path.parent.parent)
    at = _open(monkeypatch, raw_root, {"store": raw_store.name})
    assert at.info and "python -m engine interpret" in at.info[0].value


def test_head_page_on_a_stored_query_image(monkeypatch, store_env):
    root, store, _ = store_env
    with open_store(store) as r:
        layer, head = r.layers[-1], 0
        top = ut.unit_examples(r, layer, head).iloc[0]

    at = _open(monkeypatch, root, {"store": store.name, "unit": head_name(layer, head),
                                   "image": str(int(top.image_id))})  # fmt: skip
    at.toggle(key="head_q").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = {m.label: m.value for m in at.metric}["Projection on the direction"]
    assert float(shown) == pytest.approx(top.projection, rel=1e-3, abs=1e-4)


def test_clicks_on_the_heads_table_and_grid_name_the_head():
    from types import SimpleNamespace

    import pandas as pd

    from dashboard import unit_page

    frame = pd.DataFrame({"name": ["L6H0", "L7H3"], "layer": [6, 7], "head": [0, 3]})
    row = SimpleNamespace(selection=SimpleNamespace(rows=[1], columns=[]))
    assert unit_page.clicked_row(row, frame) == (7, 3)
    assert unit_page.clicked_row(SimpleNamespace(selection=SimpleNamespace(rows=[])), frame) is None
    cell = SimpleNamespace(selection={"cell": [{"layer": 6, "head": 0}]})
    assert unit_page.clicked_cell(cell, "cell") == (6, 0)
    assert unit_page.clicked_cell(SimpleNamespace(selection={"cell": []}), "cell") is None
    assert unit_page.parse_unit("l7h3") == ("head", 7, 3)
    assert unit_page.parse_unit("L6n12") == ("neuron", 6, 12)
    assert unit_page.parse_unit("L6N12").name == "L6N12" and unit_page.parse_unit("L7X3") is None
    named = pd.DataFrame({"unit": ["L6N0", "L6N5"], "layer": [6, 6], "neuron": [0, 5]})
    assert unit_page.clicked_unit(row, named) == "L6N5"


@pytest.mark.parametrize("page", ["head_image_neighbours", "head_text_neighbours"])
def test_pages_naming_a_head_link_to_its_page(monkeypatch, store_env, page):
    root, store, _ = store_env
    monkeypatch.setenv("CLIP_INTERPRET_ARTIFACTS", str(root))
    monkeypatch.delenv("CLIP_INTERPRET_STORE", raising=False)
    at = AppTest.from_file(HOME, default_timeout=300)
    at.query_params["store"] = store.name
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    links = [(x.proto.page, x.proto.label) for x in at.get("page_link")]
    to_head = [label for target, label in links if target.endswith("head")]
    assert to_head and all(re.fullmatch(r"L\d+H\d+'s page", x) for x in to_head), links


@pytest.mark.parametrize("page", ["topic_segmentation", "contrastive_segmentation"])
def test_segmentation_pages_link_to_the_heads_they_sum(monkeypatch, store_env, page):
    """Aggregate (the default): every summed head's page is linked; one head: its page link."""
    root, store, _ = store_env
    monkeypatch.setenv("CLIP_INTERPRET_ARTIFACTS", str(root))
    monkeypatch.delenv("CLIP_INTERPRET_STORE", raising=False)
    at = AppTest.from_file(HOME, default_timeout=300)
    at.query_params["store"] = store.name
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    with open_store(store) as r:
        n_heads = len(r.layers) * r.n_heads
    text = " ".join(m.value for m in at.markdown)
    linked = re.findall(r"\[(L\d+H\d+)\]\(\./head\?store=[^&]+&unit=\1\)", text)
    assert len(set(linked)) == n_heads, text[:500]
    at.radio[0].set_value("One head").run()
    assert not at.exception, [e.value for e in at.exception]
    to_head = [x.proto.label for x in at.get("page_link") if x.proto.page.endswith("head")]
    assert len(to_head) == 1 and re.fullmatch(r"L\d+H\d+'s page", to_head[0]), to_head


def test_head_page_variance_share_is_the_brute_force_ratio_and_its_rank(monkeypatch, store_env):
    """The share shown is var(head's contribution) ÷ var(embedding) from the decoded arrays, and
    the caption ranks it among the store's heads (the smallest share ranks last)."""
    import numpy as np

    root, store, _ = store_env
    with open_store(store) as r:
        out = r.output().astype(np.float64)  # [image, d_embed]
        embed_var = out.var(axis=0).sum()
        share = {  # [image, d_embed] contributions, brute force
            (l, h): r.head_out(l, h).astype(np.float64).var(axis=0).sum() / embed_var
            for l in r.layers
            for h in range(r.n_heads)
        }
    least = min(share, key=share.get)
    at = _open(monkeypatch, root, {"store": store.name, "unit": head_name(*least)})
    metrics = {m.label: m.value for m in at.metric}
    shown = float(metrics["Share of embedding variance"].rstrip("%")) / 100
    assert shown == pytest.approx(share[least], abs=5.1e-5)  # shown to 0.01 %
    caption = " ".join(c.value for c in at.caption)
    assert f"rank {len(share)} of {len(share)} heads" in caption


def test_head_page_without_maps(monkeypatch, tmp_path):
    """A store whose examples have no maps (random data: no image behind the rows; the same as
    `--no-unit-maps`) still renders its Head page, saying why there are no maps."""
    import numpy as np

    from engine.pipeline.interpret import run_interpretation
    from engine.store.random_store import write_random_store

    link = tmp_path / "artifacts" / "r"
    link.parent.mkdir()
    dims = {"n_layers": 4, "n_heads": 2, "d_model": 16, "d_head": 8, "d_embed": 12,
            "image_size": 32, "patch_size": 16, "grid": 2}  # fmt: skip
    write_random_store(link, 40, dims=dims, image_chunk=8)

    def fake_texts(s, texts):
        t = np.random.default_rng(0).standard_normal((len(texts), int(s.info["d_embed"])))
        return (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)

    run_interpretation(link, progress=False, text_embeddings_fn=fake_texts, unit_k=4)
    with open_store(link) as r:
        assert ut.unit_examples(r, 3, 1)["map"].isna().all()
    at = _open(monkeypatch, link.parent, {"store": "r", "unit": "L3H1"})
    assert _shown(at).startswith("L3H1 · ")
    assert any("Maps: random data" in c.value for c in at.caption)
    captions = [c for img in at.get("image") for c in img.captions]
    assert len([c for c in captions if c.startswith("#")]) == 8  # 4 top + 4 bottom, no maps
