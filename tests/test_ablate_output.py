"""`ablate` says what it measured: the per-head table, and a random baseline that cannot differ
from the ablated set (issue 20, item 5)."""

import json

import numpy as np
import pytest

from engine.cli import main
from engine.core.ablation import random_baseline
from engine.core.baseline import check_baseline
from engine.core.components import Component, ComponentSet
from engine.pipeline.build import BuildParams, build_store
from engine.store import open_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    link = tmp_path_factory.mktemp("abl") / "artifacts" / "t"
    link.parent.mkdir()
    build_store(BuildParams(model="tiny-test", images="synthetic:96", store=str(link),
                            random_weights=True, progress=False, layers="all"))  # fmt: skip
    return link


def _heads(n_layers=3, n_heads=4):
    z = np.zeros((1, 2), np.float32)
    return ComponentSet(
        [Component(f"L{l}H{h}", "head", l, h, dense=z) for l in range(n_layers)
         for h in range(n_heads)] + [Component("L1.mlp", "mlp", 1, dense=z)]
    )  # fmt: skip


@pytest.mark.unit
def test_check_baseline_agrees_with_the_draws():
    comps = _heads()
    cases = {
        ("L2H0", "L2H1", "L2H2", "L2H3"): "identical",  # all of layer 2
        ("L1H0", "L1H1", "L1H2"): "overlapping",  # 3 ablated, 1 other
        ("L1H0", "L2H0", "L2H1", "L2H2", "L2H3"): "overlapping",  # layer 2 whole, layer 1 not
        ("L1H0", "L1H1"): "ok",
        ("L1.mlp",): "none",
    }
    for ablated, status in cases.items():
        chk = check_baseline(comps, ablated)
        assert chk.status == status, (ablated, chk)
        draws = random_baseline(comps, list(ablated), draws=20, seed=0)
        same = [sorted(d) == sorted(ablated) for d in draws]
        # identical: every draw is the ablated set; otherwise some draw differs
        assert (bool(draws) and all(same)) == (status == "identical")
        reuse = any(set(d) & set(ablated) for d in draws)
        assert reuse == (status in ("identical", "overlapping"))
        assert (chk.note == "") == (status == "ok")
    chk = check_baseline(comps, next(iter(cases)))
    assert "cannot differ" in chk.note and "layer 2" in chk.note and not chk.meaningful


@pytest.mark.slow
def test_per_head_table_and_json_with_and_without_writing(store, capsys):
    with open_store(store) as r:
        n_heads, layers = r.info["n_heads"], r.layers
    heads = n_heads * len(layers)
    base = ["ablate", "--store", str(store), "--ablate", "L2H0", "--random", "3", "--per-head"]
    for extra in (["--no-write"], []):
        assert main([*base, "--json", *extra]) == 0
        js = json.loads(capsys.readouterr().out)
        rows = js["per_head"]
        tasks = [t["task"] for t in js["tasks"]]
        assert len(rows) == heads * len(tasks)
        assert {(x["layer"], x["head"]) for x in rows} == {(l, h) for l in layers
                                                          for h in range(n_heads)}  # fmt: skip
        for x in rows:
            assert x["name"] == f"L{x['layer']}H{x['head']}"
            assert x["drop"] == pytest.approx(x["before"] - x["after"])
        # a head alone, as in the per-head table, is the ablation of that head
        mine = {x["task"]: x for x in rows if x["name"] == "L2H0"}
        for t in js["tasks"]:
            assert mine[t["task"]]["after"] == pytest.approx(t["after"])
        assert js["baseline"]["status"] == "ok" and js["baseline"]["meaningful"]
    with open_store(store) as r:
        stored = r.query("SELECT * FROM head_effects")
    assert len(stored) == heads * len(tasks)  # the written run
    # text: the summary, then one row per head with a column per task
    assert main([*base, "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "per head (each head mean-ablated alone" in out
    table = out.split("per head (")[1].splitlines()[1:]
    assert table[0].split()[0] == "head" and table[0].split()[1:] == tasks
    assert [line.split()[0] for line in table[1:]] == [
        f"L{l}H{h}" for l in layers for h in range(n_heads)
    ]
    l2h0 = next(line for line in table if line.startswith("L2H0")).split()[1:]
    assert [float(v) for v in l2h0] == pytest.approx([mine[t]["drop"] for t in tasks], abs=5e-4)
    # without --per-head: no table, no key
    assert main(["ablate", "--store", str(store), "--ablate", "L2H0", "--random", "2",
                 "--no-write", "--json"]) == 0  # fmt: skip
    assert "per_head" not in json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_a_baseline_that_cannot_differ_is_said(store, capsys):
    argv = ["ablate", "--store", str(store), "--ablate", "layers:2", "--random", "3", "--no-write"]
    assert main([*argv, "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["baseline"]["status"] == "identical" and not js["baseline"]["meaningful"]
    assert js["baseline"]["identical_layers"] == [2]
    assert all(sorted(d) == sorted(js["ablated"]) for d in js["random_draws"])  # why it is said
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "note: the random baseline cannot differ from the ablated set" in out
    assert main(["ablate", "--store", str(store), "--ablate", "L2H0", "--random", "3",
                 "--no-write"]) == 0  # fmt: skip
    assert "note:" not in capsys.readouterr().out
