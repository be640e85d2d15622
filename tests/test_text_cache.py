"""interpret's text-bank cache, its label summary and the `heads` command (issue 20, item 2)."""

import json

import numpy as np
import pytest

import engine.model
from engine.cli import main
from engine.core.label_summary import summarise_labels
from engine.core.labels import MIXED
from engine.model.text_cache import TextCache, bank_embeddings, model_identity, tokenizer_identity
from engine.pipeline.build import BuildParams, build_store
from engine.sources.banks import load_bank
from engine.store import open_store


def _build(link, images="synthetic:96"):
    build_store(BuildParams(model="tiny-test", images=images, store=str(link),
                            random_weights=True, progress=False, layers="all"))  # fmt: skip
    return link


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """The text-embeddings folder under a fresh cache root."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CLIP_INTERPRET_CACHE", str(root))
    return root / "text-embeddings"


@pytest.fixture
def encoded(monkeypatch):
    """Counts the texts the model encodes (engine.model.encode_text, however it is reached)."""
    calls = []
    real = engine.model.encode_text

    def counting(lm, texts, *a, **kw):
        calls.append(len(texts))
        return real(lm, texts, *a, **kw)

    monkeypatch.setattr(engine.model, "encode_text", counting)
    return calls


@pytest.mark.slow
def test_rerun_encodes_nothing_and_a_new_store_of_the_same_model_hits(
    tmp_path, cache, encoded, capsys
):
    store = _build(tmp_path / "artifacts" / "a")
    assert main(["interpret", "--store", str(store), "--no-progress", "--json"]) == 0
    out = capsys.readouterr()
    first = json.loads(out.out)
    with open_store(store) as r:
        ts1 = r.query("SELECT layer, head, rank, text FROM textspan ORDER BY ALL")
    n_texts = len(load_bank("world"))
    assert sum(encoded) == n_texts > 0
    # said up front, even with --no-progress, how many texts and where they are kept
    assert f"encoding {n_texts:,} texts of bank world" in out.err and str(cache) in out.err
    assert first["timings"]["texts_encoded"] == n_texts
    assert len(list(cache.glob("*.npy"))) == 1 and len(list(cache.glob("*.json"))) == 1

    # the rerun (other options, same bank) encodes nothing and says nothing about encoding
    encoded.clear()
    argv = ["interpret", "--store", str(store), "--no-progress", "--json", "--texts-per-head", "5"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert encoded == [] and "encoding" not in out.err
    assert json.loads(out.out)["timings"]["texts_encoded"] == 0
    with open_store(store) as r:
        ts2 = r.query("SELECT layer, head, rank, text FROM textspan ORDER BY ALL")
    # same picks as with freshly encoded texts (the first 5 of each head's 10)
    assert ts2.equals(ts1[ts1["rank"] < 5].reset_index(drop=True))

    # another store of the same weights (other images) reuses the bank's embeddings
    other = _build(tmp_path / "artifacts" / "b", images="synthetic:48:3")
    assert main(["interpret", "--store", str(other), "--no-progress"]) == 0
    assert encoded == []
    # another bank is another entry
    assert main(["interpret", "--store", str(other), "--no-progress", "--bank", "general"]) == 0
    assert sum(encoded) > 0 and len(list(cache.glob("*.npy"))) == 2


def test_cached_embeddings_round_trip_and_bad_entries_are_misses(tmp_path):
    info = {"model_spec": "tiny-test", "weights_hash": "random:seed0", "random_weights": True,
            "d_embed": 4}  # fmt: skip
    texts = ["a red cube", "a blue ball", "a green cone"]
    rng = np.random.default_rng(0)
    want = rng.normal(size=(3, 4)).astype(np.float32)
    calls, lines = [], []

    def encode(t):
        calls.append(list(t))
        return want

    c = TextCache(tmp_path / "c")
    prepared = []

    def prepare():  # the model loaded and verified: before the announcement, only on a miss
        prepared.append(len(lines))

    got = bank_embeddings(info, texts, encode, cache=c, announce=lines.append, prepare=prepare)
    assert not got.hit and got.n_encoded == 3 and calls == [texts] and len(lines) == 1
    assert prepared == [0]
    again = bank_embeddings(info, texts, encode, cache=c, announce=lines.append, prepare=prepare)
    assert again.hit and again.n_encoded == 0 and len(calls) == 1 and len(lines) == 1
    assert prepared == [0]
    np.testing.assert_array_equal(again.emb, want)
    assert again.emb.dtype == np.float32
    # other texts, other order, other seed or other weights: other entries
    for i2, t2 in (({**info, "weights_hash": "random:seed1"}, texts), (info, texts[::-1]),
                   ({**info, "model_spec": "ViT-B-32"}, texts)):  # fmt: skip
        assert not bank_embeddings(i2, t2, encode, cache=c).hit
    # a truncated, a wrong-shape or a non-finite entry is a miss, then rewritten
    key = Path_of(c, info, texts)
    for bad in (b"\x93NUMPY garbage", None, np.full((3, 4), np.nan, np.float32)):
        if bad is None:
            np.save(key, np.zeros((2, 4), np.float32))
        elif isinstance(bad, bytes):
            key.write_bytes(bad)
        else:
            np.save(key, bad)
        n = len(calls)
        got = bank_embeddings(info, texts, encode, cache=c)
        assert not got.hit and len(calls) == n + 1
        np.testing.assert_array_equal(np.load(key), want)
    # weights unknown: never cached; an unwritable cache: the run goes on
    assert not bank_embeddings({**info, "weights_hash": "unknown"}, texts, encode, cache=c).hit
    assert bank_embeddings({**info, "weights_hash": "unknown"}, texts, encode, cache=c).where == ""
    blocked = tmp_path / "file"
    blocked.write_text("x")
    got = bank_embeddings(info, texts, encode, cache=TextCache(blocked / "sub"))
    assert not got.hit and got.where == "" and got.emb.shape == (3, 4)


def Path_of(c, info, texts):
    m = model_identity(info["model_spec"], info["weights_hash"], info["random_weights"])
    return c.path(c.key(m, texts, tokenizer_identity(info)))


def test_model_identity():
    h = "sha256:" + "ab" * 32
    # a checkpoint file is its architecture and its hash, wherever it lies
    assert model_identity("ViT-B-32:/a/x.safetensors", h) == model_identity("ViT-B-32:/b/y.pt", h)
    assert model_identity("ViT-B-32:/a/x.pt", h) != model_identity("ViT-B-16:/a/x.pt", h)
    assert model_identity("ViT-B-32/openai", h) != model_identity("ViT-B-32:/a/x.pt", h)
    assert model_identity("local-dir:/a", h) == model_identity("local-dir:/b", h)
    # random weights: the spec and the seed
    assert model_identity("ViT-B-32", "random:seed0", True) != model_identity(
        "ViT-B-16", "random:seed0", True
    )
    assert model_identity("tiny-test", "unknown") is None and model_identity("", h) is None


@pytest.mark.unit
def test_label_summary_counts_and_the_mixed_note():
    s = summarise_labels(["colour", MIXED, "shape", "colour"])
    assert s.counts == {"colour": 2, "shape": 1, MIXED: 1} and list(s.counts)[-1] == MIXED
    assert s.n_heads == 4 and s.n_mixed == 1 and s.note == ""
    assert any("colour" in line and "2" in line for line in s.lines())
    every = summarise_labels([MIXED] * 48)
    assert every.note.startswith("all 48 heads are `mixed`") and "random init" in every.note
    assert "note: all 48 heads" in "\n".join(every.lines())
    rnd = summarise_labels([MIXED] * 48, random_weights=True)
    assert "random weights" in rnd.note and "expected" in rnd.note
    most = summarise_labels([MIXED] * 40 + ["colour"] * 8)
    assert most.note.startswith("40 of 48 heads are `mixed`")
    assert summarise_labels([MIXED] * 4 + ["colour"] * 4).note == ""
    assert summarise_labels([]).lines() == ["no heads were labelled"]


@pytest.mark.slow
def test_interpret_summary_and_heads_command(tmp_path, cache, capsys):
    store = _build(tmp_path / "artifacts" / "a")
    assert main(["heads", "--store", str(store)]) == 2  # not interpreted yet
    assert "run `python -m engine interpret" in capsys.readouterr().err
    assert main(["interpret", "--store", str(store), "--no-progress"]) == 0
    out = capsys.readouterr().out
    with open_store(store) as r:
        labels = r.head_labels()
        ts = r.query("SELECT layer, head, rank, text, variance_removed FROM textspan")
    want = summarise_labels(list(labels.values()), random_weights=True)
    assert "\n".join(want.lines()) in out and want.n_heads == len(labels)
    if want.n_mixed >= 0.75 * want.n_heads:  # a random-init tiny model: mostly mixed
        assert "random weights" in out
    # --json carries the same counts
    assert main(["interpret", "--store", str(store), "--no-progress", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["labels"]["counts"] == want.counts and js["labels"]["heads"] == len(labels)

    # heads --json: every labelled head, its label and its texts best first
    assert main(["heads", "--store", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(x["layer"], x["head"]) for x in rows] == sorted(labels)
    for x in rows:
        assert (
            x["name"] == f"L{x['layer']}H{x['head']}"
            and x["label"] == labels[(x["layer"], x["head"])]
        )
        mine = ts[(ts["layer"] == x["layer"]) & (ts["head"] == x["head"])].sort_values("rank")
        assert [t["text"] for t in x["top_texts"]] == mine.text.tolist()
        assert [t["variance_removed"] for t in x["top_texts"]] == pytest.approx(
            mine.variance_removed.tolist()
        )
    # text: one line per head, top texts shown
    assert main(["heads", "--store", str(store), "--texts", "2"]) == 0
    text = capsys.readouterr().out
    first = rows[0]
    assert any(
        line.startswith(first["name"])
        and first["top_texts"][0]["text"] in line
        and first["top_texts"][2]["text"] not in line
        for line in text.splitlines()
    )
    # --label filters (case and plurals folded); an unknown label names the valid ones
    some = rows[0]["label"]
    assert main(["heads", "--store", str(store), "--json", "--label", some.upper() + "s"]) == 0
    picked = json.loads(capsys.readouterr().out)
    assert picked and {x["label"] for x in picked} == {some}
    assert len(picked) == sum(v == some for v in labels.values())
    assert main(["heads", "--store", str(store), "--label", "colr"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no head is labelled 'colr'") and some in err
    assert "Traceback" not in err
