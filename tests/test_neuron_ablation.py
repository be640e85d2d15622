"""Neuron ablations recorded in the store (`ablate --ablate neurons:…` -> the neuron ablation
tables), the random-neuron baseline and its note, and bad input: one line naming the command to
run, nothing stored changed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.cli import main as cli_main
from engine.core.baseline import check_neuron_baseline
from engine.core.neuron_spec import is_neuron_spec, random_neurons, spec_layers
from engine.errors import UserError
from engine.pipeline.build import BuildParams, build_store
from engine.pipeline.neuron_interpret import run_neuron_interpretation
from engine.session import StoreSession
from engine.store import open_store
from engine.store.neuron_ablations import (
    DROP_COLUMNS,
    neuron_ablation_drops,
    neuron_ablation_results,
    neuron_ablation_runs,
)
from tests.dashboard.conftest import tree_digest

pytestmark = pytest.mark.unit

N = 40


def _build(link, neurons):
    build_store(BuildParams(model="tiny-test", images=f"synthetic:{N}:2", store=str(link),
                            batch_size=20, progress=False, neurons=neurons))  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    link = tmp_path_factory.mktemp("na") / "s"
    _build(link, "1-1")
    run_neuron_interpretation(link, None, "world", top=8, n_words=4, progress=False)
    return link


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli_main(["ablate", *argv])
    got = capsys.readouterr()
    return rc, got.out, got.err


def test_the_cli_records_the_run_and_equals_the_session(store, capsys):
    argv = ["--store", str(store), "--random", "3", "--seed", "1", "--ablate", "neurons:L1:top:5"]
    rc, out, _ = _cli(capsys, *argv, "--json")
    assert rc == 0
    got = json.loads(out)
    with StoreSession.open(store) as s:  # the session computes exactly what the command recorded
        want = json.loads(json.dumps(s.ablate_neurons("neurons:L1:top:5", random=3, seed=1)
                                     .to_dict()))  # fmt: skip
        table = s.neuron_table()
    assert {k: v for k, v in got.items() if k not in ("run_id", "timings")} == want
    top5 = table[table.layer == 1].head(5).neuron.astype(int).tolist()
    assert sorted(top5) == got["neurons"]["1"]
    r = open_store(store)
    try:
        runs = neuron_ablation_runs(r)
        assert list(runs.run_id) == [got["run_id"]]
        row = runs.iloc[0]
        assert row.spec == "neurons:L1:top:5" and row.n_ablated == 5 and row.random_draws == 3
        assert row.n_fit + row.n_eval == N and row.seed == 1 and row.baseline == "ok"
        assert json.loads(row.result) == want and row.finished_at is not None
        res = neuron_ablation_results(r, got["run_id"]).set_index("task")
        for t in got["tasks"]:
            x = res.loc[t["task"]]
            assert (x.before, x.after, x.n_eval) == (t["before"], t["after"], t["n_eval"])
            assert x["drop"] == pytest.approx(t["before"] - t["after"])
            assert x.random_mean == pytest.approx(t["random_mean"])
        prov = r.runs("ablate")
        assert got["run_id"] in set(prov.run_id)
        params = json.loads(prov.set_index("run_id").loc[got["run_id"], "parameters"])
        assert params["ablate"] == "neurons:L1:top:5" and params["neurons"] == 5
        # a member's recorded drops: the run's per-task rows; a neuron outside it has none
        drops = neuron_ablation_drops(r, 1, top5[0])
        assert list(drops.columns) == DROP_COLUMNS and len(drops) == len(got["tasks"])
        assert set(drops.run_id) == {got["run_id"]} and not drops.alone.any()
        outside = next(n for n in table.neuron.astype(int) if n not in top5)
        assert neuron_ablation_drops(r, 1, outside).empty
    finally:
        r.close()
    # the same neuron alone: a second recorded run, its own drop, the latest first
    rc, out, _ = _cli(capsys, "--store", str(store), "--random", "0", "--ablate",
                      f"L1N{top5[0]}", "--json")  # fmt: skip
    alone = json.loads(out)
    with StoreSession.open(store) as s:
        drops = s.neuron_ablation_drops(1, top5[0])
        assert len(s.neuron_ablation_runs()) == 2
    assert rc == 0 and drops.run_id.iloc[0] == alone["run_id"] and drops.alone.iloc[0]
    mine = drops[drops.alone].set_index("task")
    for t in alone["tasks"]:
        assert mine.loc[t["task"], "drop"] == pytest.approx(t["drop"])
        assert np.isnan(mine.loc[t["task"], "random_mean"])  # no draws asked for


def test_no_write_and_the_printed_table(store, capsys):
    before = tree_digest(store)
    rc, out, _ = _cli(capsys, "--store", str(store), "--random", "2", "--no-write", "--ablate",
                      "neurons:L1:significant")  # fmt: skip
    assert rc == 0 and "random after" in out and "recorded as run" not in out
    assert tree_digest(store) == before


def test_bad_input_is_one_line_naming_the_command_and_changes_nothing(store, tmp_path, capsys):
    before = tree_digest(store)
    cases = {
        "neurons:L0:all": ("were not built", "python -m engine build", "--neurons 0-1"),
        "L0N3": ("were not built", "python -m engine build", "--neurons 0-1"),
        "L1N0+L1H0": ("mixes neurons",),
        "neurons:L1:sideways": ("bad neuron spec",),
        "L1N99999": ("bad neuron spec",),
    }
    for spec, words in cases.items():
        rc, out, err = _cli(capsys, "--store", str(store), "--random", "1", "--ablate", spec)
        assert rc == 2 and not out and err.count("\n") == 1 and "Traceback" not in err, spec
        assert all(w in err for w in words), (spec, err)
    rc, _, err = _cli(capsys, "--store", str(store), "--per-head", "--ablate", "L1N0")
    assert rc == 2 and "does not apply to neurons" in err
    assert tree_digest(store) == before  # nothing stored changed
    plain = tmp_path / "plain"
    _build(plain, None)
    before = tree_digest(plain)
    rc, _, err = _cli(capsys, "--store", str(plain), "--ablate", "neurons:L1:all")
    assert rc == 2 and "built without neurons" in err and "python -m engine build" in err
    assert err.count("\n") == 1 and tree_digest(plain) == before
    r = open_store(plain)
    try:  # a store without the tables' rows reads as empty, with the columns
        assert neuron_ablation_runs(r).empty and neuron_ablation_drops(r, 1, 0).empty
    finally:
        r.close()


def test_mixed_and_layer_specs():
    assert is_neuron_spec("L6N1,neurons:L6:top:3") and not is_neuron_spec("L6H1+label:colour")
    for mixed in ("L6N1+L6H1", "label:colour,neurons:L6:all", "mlp+L3N2"):
        with pytest.raises(UserError, match="mixes neurons"):
            is_neuron_spec(mixed)
    assert spec_layers("L6N1+neurons:L9:top:3:a dog,L6N4") == [6, 9]


def test_random_neurons_avoid_the_ablated_ones_when_they_can():
    rng = np.random.default_rng(0)
    chosen = np.arange(0, 40, 4)  # 10 of 100
    for _ in range(50):
        d = random_neurons(rng, 100, chosen)
        assert len(d) == 10 and len(set(d)) == 10 and not set(d) & set(chosen)
    most = np.arange(70)  # 70 of 100: too few others, drawn among all
    d = random_neurons(rng, 100, most)
    assert len(set(d)) == 70 and len(set(d) & set(most)) >= 40
    assert sorted(random_neurons(rng, 8, np.arange(8))) == list(range(8))


def test_neuron_baseline_check():
    assert check_neuron_baseline({6: [1, 2, 3]}, {6: 100}).status == "ok"
    assert check_neuron_baseline({6: [1, 2, 3]}, {6: 100}).note == ""
    same = check_neuron_baseline({6: range(8)}, {6: 8})
    assert same.status == "identical" and not same.meaningful and "cannot differ" in same.note
    over = check_neuron_baseline({6: range(60)}, {6: 100})
    assert over.status == "overlapping" and over.overlapping_layers == (6,)
    assert "L6: 60 of 100" in over.note
    both = check_neuron_baseline({6: range(8), 7: [0]}, {6: 8, 7: 8})
    assert both.status == "overlapping" and both.identical_layers == (6,)
    assert check_neuron_baseline({}, {}).status == "none"


def test_every_neuron_ablated_makes_the_draws_the_ablation(store):
    """`neurons:L1:all`: each random draw is the ablated set itself (the note says so), so the
    random accuracies equal the ablation's, exactly."""
    with StoreSession.open(store) as s:
        a = s.ablate_neurons("neurons:L1:all", random=2)
        few = s.ablate_neurons("neurons:L1:top:3", random=2)
    assert a.baseline.status == "identical" and "cannot differ" in a.baseline_note
    for t in a.tasks:
        assert (t.random == t.after).all()
    assert few.baseline.status == "ok" and few.baseline_note == ""


def test_sessions_route_neurons_and_heads_apart(store):
    from engine.session.notebook import open_store as open_notebook

    with StoreSession.open(store) as s:
        with pytest.raises(UserError, match="ablate_neurons"):
            s.ablate("L1N0", random=0)
        with pytest.raises(UserError, match="mixes neurons"):
            s.ablate("L1N0+L1H0", random=0)
        with pytest.raises(UserError, match="names no neurons"):
            s.ablate_neurons("label:colour", random=0)
        want = s.ablate_neurons("neurons:L1:bottom:4", random=1).to_dict()
    with open_notebook(store) as nb:
        assert nb.ablate_neurons("neurons:L1:bottom:4", random=1).to_dict() == want


def _dense_delta(s, chosen, fit, ev):
    """The former, in-memory formula: the whole layer dequantised, [image, neuron, K]."""
    from engine.core import second_order as so
    from engine.session import neuron_ablation as na

    out = np.zeros((len(ev), s.model_record.d_embed), np.float32)
    for layer, idx in chosen.items():
        cols, li = na._layer_slice(s, layer)
        q = s.reader.array("neuron_coord")[:, cols]  # [image, K, neuron] int8
        k = so.dequantise(q, s.reader.array("neuron_scale")[:, li])[:, idx]  # [image, n, K]
        centred = k[ev] - k[fit].mean(axis=0, keepdims=True)
        out += np.einsum("ink,nke->ie", centred, na._frames(s, layer, idx), optimize=True)
    return out


@pytest.fixture(scope="module")
def chunked(tmp_path_factory):
    """A store of N images in chunks of 16 (the last one partial), with described neurons."""
    link = tmp_path_factory.mktemp("nc") / "s"
    build_store(BuildParams(model="tiny-test", images=f"synthetic:{N}:2", store=str(link),
                            batch_size=20, progress=False, neurons="1-1", image_chunk=16))  # fmt: skip
    run_neuron_interpretation(link, None, "world", top=8, n_words=4, progress=False)
    return link


def test_streamed_deltas_equal_the_dense_formula_chunk_by_chunk(chunked, monkeypatch):
    from engine.core import ablation
    from engine.session import neuron_ablation as na
    from engine.session.neuron_ablation import neuron_delta, neuron_deltas

    with StoreSession.open(chunked) as s:
        assert int(s.info["image_chunk"]) == 16 and N % 16  # three chunks, one partial
        n = len(s.neuron_table().query("layer == 1"))
        fit, ev = ablation.split(N, 0.5, 3)
        rng = np.random.default_rng(0)
        sets = [{1: np.arange(n)}, {1: np.array([5])}, {1: np.array([], int)}]
        sets += [{1: np.sort(rng.choice(n, 9, replace=False))} for _ in range(3)]
        got = neuron_deltas(s, sets, fit, ev)
        assert len(got) == len(sets)
        for chosen, delta in zip(sets, got, strict=True):
            want = _dense_delta(s, chosen, fit, ev)
            assert delta.shape == (len(ev), s.model_record.d_embed)
            np.testing.assert_allclose(delta, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        assert not got[2].any() and np.abs(got[0]).max() > 0
        # eval images in any order come back in that order; fit images in any order, same means
        perm = rng.permutation(len(ev))
        again = neuron_delta(s, sets[3], rng.permutation(fit), ev[perm])
        np.testing.assert_allclose(again, got[3][perm], rtol=1e-5, atol=1e-6)
        monkeypatch.setattr(na, "_BLOCK_BYTES", 1)  # the fit means one image at a time
        np.testing.assert_allclose(neuron_delta(s, sets[0], fit, ev), got[0], rtol=1e-5,
                                   atol=1e-6)  # fmt: skip


def test_ablate_neurons_equals_the_dense_implementation(chunked, monkeypatch):
    """The whole ablation (draws included) is what the former per-set dense deltas gave."""
    from engine.session import neuron_ablation as na

    with StoreSession.open(chunked) as s:
        streamed = s.ablate_neurons("neurons:L1:significant", random=4, seed=2).to_dict()
        calls = []

        def dense(s_, sets, fit, ev):
            calls.append(len(sets))
            return [_dense_delta(s_, c, fit, ev) for c in sets]

        monkeypatch.setattr(na, "neuron_deltas", dense)
        want = s.ablate_neurons("neurons:L1:significant", random=4, seed=2).to_dict()
    assert calls == [5]  # the ablated set and every draw, in one call
    assert streamed == want  # accuracies are counts: float rounding of the deltas leaves them
