"""AppTest tests, one (or more) per dashboard page, on a store built by the real CLI."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine.core.layers import head_name
from tests.dashboard.conftest import ROOT, tree_digest

pytestmark = [pytest.mark.dashboard, pytest.mark.demo, pytest.mark.slow]  # demo model when bundled

HOME = str(ROOT / "dashboard" / "Home.py")
PAGES = [
    "views/overview.py",
    "views/heads.py",
    "views/property_neighbours.py",
    "views/topic_segmentation.py",
    "views/contrastive_segmentation.py",
    "views/head_image_neighbours.py",
    "views/head_text_neighbours.py",
    "views/ablation.py",
]


def _app(monkeypatch, artifacts) -> AppTest:
    monkeypatch.setenv("CLIP_INTERPRET_ARTIFACTS", str(artifacts))
    monkeypatch.delenv("CLIP_INTERPRET_STORE", raising=False)
    at = AppTest.from_file(HOME, default_timeout=300)
    at.run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _page(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    at.run()
    _ok(at)
    return at


def _images(at: AppTest):
    return at.get("image")


def _captions(at: AppTest) -> list[str]:
    return [c for img in _images(at) for c in img.captions]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _upload(at: AppTest, name: str, data: bytes, mime: str = "image/png") -> AppTest:
    at.sidebar.radio(key="image_source").set_value("Upload").run()
    at.file_uploader(key="upload").upload(name, data, mime).run()
    return at


def _neighbour_ids(at: AppTest) -> list[int]:
    """Stored-image ids of the thumbnails shown (captions '#id · score')."""
    return [int(m.group(1)) for c in _captions(at) if (m := re.match(r"#(\d+) · ", c))]


def _scores(at: AppTest) -> list[float]:
    return [float(m.group(1)) for c in _captions(at) if (m := re.match(r"#\d+ · (\S+)", c))]


# --------------------------------------------------------------------------------------- home


def test_home_without_store_names_the_build_command(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path / "empty")
    text = " ".join(c.value for c in at.code) + " ".join(m.value for m in at.markdown)
    assert "make demo" in text
    assert "python -m engine demo-store" in text
    assert at.warning and "No store" in at.warning[0].value


def test_home_sidebar_shows_store_provenance(monkeypatch, either_store_env):
    root, store, interpreted = either_store_env
    at = _app(monkeypatch, root)
    side = " ".join(m.value for m in at.sidebar.markdown)
    from engine.store import open_store

    with open_store(store) as s:
        spec, n = s.info["model_spec"], s.info["n_images"]
        run_id = s.info["run_id"]
    assert spec in side and f"{n:,}" in side and run_id[:12] in side
    assert ("Interpreted** yes" in side) == interpreted
    if not interpreted:
        assert f"Interpreted** no — run `python -m engine interpret --store {store}`" in side
    # the sample image is the default query: its centre crop is shown in the sidebar
    assert len(at.sidebar.get("image")) == 1


def test_store_typed_path_and_bad_path(monkeypatch, store_env, tmp_path):
    root, store, _ = store_env
    at = _app(monkeypatch, tmp_path / "none")  # no stores listed: Home only, with the hint
    at.sidebar.selectbox(key="store_choice").set_value("another folder…").run()
    at.sidebar.text_input(key="store_typed").set_value(str(tmp_path / "nope")).run()
    _ok(at)
    assert at.sidebar.error and "no store" in at.sidebar.error[0].value
    at.sidebar.text_input(key="store_typed").set_value(str(store)).run()
    _ok(at)
    assert not at.sidebar.error
    _page(at, "views/heads.py")
    from engine.store import open_store

    with open_store(store) as s:
        want = [head_name(l, h) for l in s.layers for h in range(int(s.info["n_heads"]))]
    assert list(at.dataframe[0].value["name"]) == want  # the typed store's heads, in order


# ----------------------------------------------------------------------------------- overview


def test_overview(monkeypatch, either_store_env):
    root, store, interpreted = either_store_env
    at = _page(_app(monkeypatch, root), "views/overview.py")
    charts = at.get("vega_lite_chart")
    assert charts, "the comparison chart with the paper's figures is always drawn"
    from engine.store import open_store

    with open_store(store) as s:
        stored = s.query("SELECT metric, labeller, value FROM scores WHERE scope = 'range'")
    if interpreted:
        shown = {m.label: float(m.value) for m in at.metric}
        want = {f"{r.metric} ({r.labeller})": round(r.value, 3) for r in stored.itertuples()}
        assert want and shown == want  # every layer-range score, as stored
    else:
        assert stored.empty and not at.metric
        assert f"python -m engine interpret --store {store}" in at.warning[0].value


# -------------------------------------------------------------------------------------- heads


def test_heads_table_filter_and_exports(monkeypatch, either_store_env, exports):
    root, store, interpreted = either_store_env
    from engine.store import open_store

    with open_store(store) as s:
        heads = [(l, h) for l in s.layers for h in range(int(s.info["n_heads"]))]
        labels = s.query("SELECT layer, head, label FROM head_labels")
    at = _page(_app(monkeypatch, root), "views/heads.py")
    df = at.dataframe[0].value
    assert list(zip(df["layer"], df["head"], strict=True)) == heads
    assert list(df["name"]) == [head_name(l, h) for l, h in heads]
    got = {(int(r.layer), int(r.head)): r.label for r in df.itertuples()}
    if interpreted:
        assert len(labels) == len(heads)
        assert got == {(int(r.layer), int(r.head)): r.label for r in labels.itertuples()}
        assert df["top_texts (variance removed)"].notna().all()
    else:
        assert labels.empty and df["label"].isna().all()
        assert "top_texts (variance removed)" not in df
        assert "python -m engine interpret" in at.info[0].value
    _assert_exports(at, df, exports)
    assert at.get("vega_lite_chart"), "layer x head grid"
    # search narrows the table (and the exports) to matching rows
    name = df["name"].iloc[-1]
    at.text_input(key="heads_search").set_value(name).run()
    _ok(at)
    view = at.dataframe[0].value
    assert list(view["name"]) == [name]
    _assert_exports(at, view, exports)


@pytest.fixture
def exports(monkeypatch):
    """The bytes of every file a page offers for download, by media file id."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    files: dict[str, bytes] = {}
    real = MemoryMediaFileStorage.load_and_get_id

    def keep(self, path_or_data, mimetype, kind, filename=None):
        file_id = real(self, path_or_data, mimetype, kind, filename)
        files[file_id] = bytes(path_or_data)
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", keep)
    return files


def _assert_exports(at: AppTest, shown, files: dict[str, bytes]) -> None:
    """The Heads page's CSV and Parquet downloads hold exactly the table shown."""
    import pandas as pd

    buttons = {b.proto.label: b.proto.url for b in at.get("download_button")}
    assert set(buttons) == {"Download CSV", "Download Parquet"}
    data = {k: files[url.rsplit("/", 1)[1].split(".")[0]] for k, url in buttons.items()}
    parquet = pd.read_parquet(io.BytesIO(data["Download Parquet"]))
    pd.testing.assert_frame_equal(parquet.reset_index(drop=True), shown.reset_index(drop=True))
    csv = pd.read_csv(io.BytesIO(data["Download CSV"]))
    pd.testing.assert_frame_equal(
        csv, shown.reset_index(drop=True), check_dtype=False, check_exact=True
    )


# ------------------------------------------------------------------------- property neighbours


def test_property_neighbours_on_sample(monkeypatch, either_store_env):
    root, store, interpreted = either_store_env
    at = _page(_app(monkeypatch, root), "views/property_neighbours.py")
    if not interpreted:  # no labels and no ground truth yet: heads are chosen by hand
        assert "No head labels yet" in at.info[0].value
        assert not [w for w in at.selectbox if w.key == "prop_name"]
    else:  # a property combines exactly the heads carrying it
        from engine.store import open_store

        with open_store(store) as s:
            labels = s.query("SELECT layer, head, label FROM head_labels")
            gt = s.query("SELECT layer, head, factor FROM ground_truth WHERE is_dominant")
        prop = at.selectbox(key="prop_name").value
        name, source = prop.rsplit(" (", 1)
        table = labels if source == "label)" else gt
        assert source in ("label)", "ground truth)") and name != "mixed"
        col = "label" if source == "label)" else "factor"
        want = {(int(r.layer), int(r.head)) for r in table.itertuples() if getattr(r, col) == name}
        assert want and set(at.multiselect(key=f"prop_heads_{prop}").value) == want
    ids = _neighbour_ids(at)
    assert len(ids) == 8 and len(set(ids)) == 8
    s = _scores(at)
    assert s == sorted(s, reverse=True) and all(-1.0001 <= x <= 1.0001 for x in s)


def test_property_neighbours_on_stored_image_excludes_itself(monkeypatch, store_env):
    root, _, _ = store_env
    at = _app(monkeypatch, root)
    at.sidebar.radio(key="image_source").set_value("From the store").run()
    at.sidebar.number_input(key="store_image").set_value(7).run()
    _page(at, "views/property_neighbours.py")
    ids = _neighbour_ids(at)
    assert len(ids) == 8 and 7 not in ids


# ------------------------------------------------------------------------------- segmentation


def _sum_over_patches(at: AppTest) -> float:
    cap = [c.value for c in at.caption if c.value.startswith("Sum over patches")]
    assert cap, "the per-patch sum is shown"
    return float(cap[0].split(":")[1])


def test_topic_segmentation_single_and_aggregate(monkeypatch, store_env):
    root, _, _ = store_env
    at = _page(_app(monkeypatch, root), "views/topic_segmentation.py")
    assert len(_images(at)) >= 2  # overlay + colour bar
    assert at.get("vega_lite_chart")
    assert at.radio(key="topic_mode").value == "Aggregate"  # the default
    total = _sum_over_patches(at)
    at.radio(key="topic_mode").set_value("One head").run()
    _ok(at)
    single = _sum_over_patches(at)
    assert total != pytest.approx(single)  # all heads, not the single one


def test_contrastive_is_difference_of_topics_and_truly_aggregates(monkeypatch, store_env):
    root, _, _ = store_env
    at = _page(_app(monkeypatch, root), "views/topic_segmentation.py")
    at.radio(key="topic_mode").set_value("Aggregate").run()
    sums = {}
    for t in ("a red object", "a blue object"):
        at.text_input(key="topic_text").set_value(t).run()
        _ok(at)
        sums[t] = _sum_over_patches(at)
    _page(at, "views/contrastive_segmentation.py")
    at.text_input(key="contrast_t1").set_value("a red object")
    at.text_input(key="contrast_t2").set_value("a blue object")
    at.radio(key="contrast_mode").set_value("Aggregate").run()
    _ok(at)
    agg = _sum_over_patches(at)
    assert agg == pytest.approx(sums["a red object"] - sums["a blue object"], abs=2e-4)
    # one head only gives a different number: the aggregate is not silently one head
    at.radio(key="contrast_mode").set_value("One head").run()
    assert _sum_over_patches(at) != pytest.approx(agg)


# ------------------------------------------------------------------------ head neighbours


def test_head_image_neighbours_upload_round_trip(monkeypatch, store_env):
    """Uploading a stored image's own pixels finds that image (cosine 1) for every head; only
    images with the same contribution up to float16 can tie with it."""
    root, store, _ = store_env
    from engine.store import open_store

    with open_store(store) as s:
        thumb = s.thumbnails([5])[0]
    at = _app(monkeypatch, root)
    _upload(at, "stored5.png", _png(thumb))
    _ok(at)
    assert not at.sidebar.error
    # the upload repeats stored image #5 pixel for pixel: the sidebar says so
    assert any("stored image #5 " in w.value for w in at.sidebar.warning)
    _page(at, "views/head_image_neighbours.py")
    heads = at.multiselect(key="hin_heads").value
    ids, scores = _neighbour_ids(at), _scores(at)
    assert len(ids) == 8 * len(heads)
    for j in range(len(heads)):  # per head: image 5 is found with cosine 1 (up to fp16)
        head_ids, head_scores = ids[8 * j : 8 * j + 8], scores[8 * j : 8 * j + 8]
        assert 5 in head_ids, (heads[j], head_ids)
        assert head_scores[head_ids.index(5)] == pytest.approx(1.0, abs=2e-3)
        assert head_scores[0] == pytest.approx(1.0, abs=2e-3)  # nothing ranks above it


def test_head_text_neighbours(monkeypatch, either_store_env):
    root, store, interpreted = either_store_env
    at = _page(_app(monkeypatch, root), "views/head_text_neighbours.py")
    sources = at.radio(key="htn_source").options
    assert sources == (["TextSpan text", "Typed text"] if interpreted else ["Typed text"])
    at.radio(key="htn_source").set_value("Typed text").run()
    at.text_input(key="htn_typed").set_value("a green object").run()
    _ok(at)
    s = _scores(at)
    assert len(s) == 8 and s == sorted(s, reverse=True)
    # the same scores from the store directly: head_out · text
    from engine.model import encode_text, load_model
    from engine.store import open_store

    l, h = at.selectbox(key="htn_head").value
    with open_store(store) as st_:
        head_out = st_.head_out(l, h)
        lm = load_model(st_.info["model_spec"], random_weights=bool(st_.info["random_weights"]))
    t = encode_text(lm, ["a green object"]).numpy()[0]
    expected = np.sort(head_out @ t)[::-1][:8]
    np.testing.assert_allclose(s, expected, atol=1.5e-3)


# --------------------------------------------------------------------------- bad uploads


def _bad_uploads() -> dict[str, bytes]:
    good = _png(np.full((32, 32, 3), 90, np.uint8))
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")  # 81 Mpx, a few KB
    wide = _png(np.zeros((4, 400, 3), np.uint8))
    return {
        "empty.png": b"",
        "notes.png": b"this is not an image at all",
        "truncated.png": good[: len(good) // 2],
        "bomb.png": bomb.getvalue(),
        "wide.png": wide,
    }


@pytest.mark.parametrize("name", list(_bad_uploads()))
def test_bad_upload_gives_clear_error(monkeypatch, store_env, name):
    root, _, _ = store_env
    at = _app(monkeypatch, root)
    _upload(at, name, _bad_uploads()[name])
    _ok(at)
    assert at.sidebar.error, "a clear message in the sidebar"
    message = at.sidebar.error[0].value
    assert message.startswith(("cannot use this upload: ", "upload too large"))
    assert "Traceback" not in message and "\n" not in message
    # analysis pages repeat the reason instead of analysing anything
    _page(at, "views/topic_segmentation.py")
    assert [e.value for e in at.main.error] == [message]
    assert not _images(at)


@pytest.mark.parametrize(
    ("mode", "note"),
    [
        ("CMYK", "CMYK"),
        ("RGBA", "transparency"),
        ("I;16", "high bit depth"),
        ("animated", "first frame"),
    ],
)
def test_unusual_but_valid_uploads_work(monkeypatch, store_env, mode, note):
    root, _, _ = store_env
    rgb = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    if mode == "animated":
        frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
        frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    elif mode == "CMYK":
        Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG")
    elif mode == "RGBA":
        Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(buf, format="PNG")
    else:
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(buf, format="PNG")
    at = _app(monkeypatch, root)
    _upload(at, f"x.{mode}", buf.getvalue())
    _ok(at)
    assert not at.sidebar.error
    assert note in " ".join(i.value for i in at.sidebar.info), "the conversion is stated"
    _page(at, "views/topic_segmentation.py")
    assert len(_images(at)) >= 2


# ------------------------------------------------------------------------------- read-only


def test_every_page_leaves_the_store_untouched(monkeypatch, either_store_env):
    root, store, _ = either_store_env
    before = tree_digest(store)
    at = _app(monkeypatch, root)
    for page in PAGES:
        _page(at, page)
    # AppTest drops the sidebar after switch_page, so pick the stored image in a fresh app
    at = _app(monkeypatch, root)
    at.sidebar.radio(key="image_source").set_value("From the store").run()
    for page in PAGES:
        _page(at, page)
    assert tree_digest(store) == before


# ------------------------------------------------------- a paper model without its weights


def test_paper_model_store_without_weights(monkeypatch, tmp_path):
    """Reference labels and the paper demo's properties appear; analyses that need the model
    say why they cannot run (weights not on this machine) instead of failing; analyses of a
    stored image need no model."""
    from tests.dashboard.conftest import paper_shaped_store

    root = tmp_path / "artifacts"
    root.mkdir()
    paper_shaped_store(root / "vitb32")
    at = _page(_app(monkeypatch, root), "views/overview.py")  # not interpreted: says how
    assert "python -m engine interpret" in at.warning[0].value
    assert at.get("vega_lite_chart")  # the paper's figures are shown anyway
    _page(at, "views/heads.py")
    df = at.dataframe[0].value
    assert len(df) == 48 and df["reference_label"].notna().all()
    assert df["label"].isna().all() and "interpret" in at.info[0].value
    _page(at, "views/topic_segmentation.py")
    assert at.error and "ViT-B-32/openai" in at.error[0].value
    at = _app(monkeypatch, root)
    at.sidebar.radio(key="image_source").set_value("From the store").run()
    _page(at, "views/property_neighbours.py")
    prop = at.selectbox(key="prop_name").value
    assert prop.endswith("(paper demo)")
    ids = _neighbour_ids(at)
    assert len(ids) == 8 and 0 not in ids  # stored image #0 is the query


def test_one_decomposition_per_image_shared_by_every_page(monkeypatch, store_env):
    """The uploaded image is decomposed once; every analysis page reuses it."""
    import engine.core.decompose

    root, _, _ = store_env
    calls = []
    real = engine.core.decompose.decompose

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.core.decompose, "decompose", counting)
    rgb = np.random.default_rng(42).integers(0, 255, (64, 64, 3), dtype=np.uint8)  # a new image
    at = _app(monkeypatch, root)
    _upload(at, "fresh.png", _png(rgb))
    for page in PAGES[2:]:  # the five analyses
        _page(at, page)
    assert len(calls) == 1
    assert not at.sidebar.warning  # a new image: not flagged as a stored one


def test_heads_grid_draws_mixed_neutral(monkeypatch, store_env):
    """The layer x head grid colours `mixed` heads grey, not like a property."""
    import json

    from dashboard import charts

    root, _, _ = store_env
    at = _page(_app(monkeypatch, root), "views/heads.py")
    labels = set(at.dataframe[0].value["label"].dropna())
    assert "mixed" in labels  # the fixture's random-ish heads include mixed ones
    spec = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    scales = [
        layer["encoding"]["color"]["scale"]
        for layer in spec.get("layer", [spec])
        if "scale" in layer.get("encoding", {}).get("color", {})
    ]
    assert scales, spec
    colours = dict(zip(scales[0]["domain"], scales[0]["range"], strict=True))
    assert colours["mixed"] == charts.NEUTRAL["mixed"]
    assert all(colours[l] not in charts.NEUTRAL.values() for l in labels - {"mixed"})
