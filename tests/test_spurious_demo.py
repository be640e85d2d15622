"""`spurious` and grouped `ablate` over a real store of the biased demo model: CLI round trips,
the recorded tables, the reusable spec, and the Waterbirds recipe (docs/spurious.md) run on the
planted world through a `path,class,group` FILE."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.cli import main
from engine.core.ablation_spec import parse_ablation_spec
from engine.sources import world
from engine.store import open_store

pytestmark = [pytest.mark.slow, pytest.mark.demo]

N_IMAGES = 600


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    link = tmp_path_factory.mktemp("spur") / "artifacts" / "b"
    link.parent.mkdir()
    argv = ["demo-store", "--biased", "--store", str(link), "--images", str(N_IMAGES),
            "--repair", "2", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    return link


def test_demo_store_biased_records_the_finder_and_the_repair(store, capsys):
    with open_store(store) as r:
        assert r.info["model_spec"] == "demo-biased"
        runs = r.query("SELECT * FROM spurious_runs")
        heads = r.query("SELECT * FROM spurious_heads ORDER BY rank")
        n_heads = len(r.layers) * r.n_heads
        abl = r.query("SELECT * FROM ablation_runs")
        groups = r.query("SELECT * FROM ablation_groups")
    assert len(runs) == 1 and runs.task[0] == world.BIAS.core and runs.k[0] == 2
    assert runs.n_means[0] + runs.n_score[0] + runs.n_held_out[0] == N_IMAGES
    assert len(heads) == n_heads and heads["rank"].tolist() == list(range(1, n_heads + 1))
    assert (np.diff(heads["effect"].to_numpy()) <= 1e-12).all()  # ranked by effect
    res = json.loads(runs.result[0])
    assert res["spec"] == runs.spec[0]
    if runs.spec[0] != "none":  # the repair was also recorded as an ablation with groups
        assert runs.spec[0] in set(abl.spec)
        assert set(groups.grp) >= {"circle / black"}


def test_cli_ranks_repairs_and_the_spec_is_reusable(store, capsys):
    argv = ["spurious", "--store", str(store), "--repair", "3", "--random", "4", "--json",
            "--no-write"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_means"] + out["n_score"] + out["n_held_out"] == N_IMAGES
    assert len(out["spurious_texts"]) > 0 and len(out["core_texts"]) > 0
    assert all(-1 <= h["alignment"] <= 1 for h in out["heads"])
    assert len(out["repair"]) <= 3
    with open_store(store) as r:
        heads = [(l, h) for l in r.layers for h in range(r.n_heads)]
        n_layers = int(r.info["n_layers"])
    names = parse_ablation_spec(out["spec"], heads, {}, n_layers)
    assert out["spec"] == "none" or len(names) == len(out["repair"])
    if out["held_out"] is not None:
        assert len(out["held_out"]["random_worst"]) == 4
    # the reusable spec, through ablate with groups
    argv = ["ablate", "--store", str(store), "--tasks", "groups", "--ablate", out["spec"],
            "--random", "2", "--no-write"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "worst-group" in text and "circle / black" in text


def write_group_file(store, path):
    """The Waterbirds layout for the world store: path,class,group per image."""
    with open_store(store) as r:
        images = r.images()
        names, codes = r.factors()
    k_s, k_b = names.index("shape"), names.index("background")
    lines = ["path,class,group"]
    for p, c in zip(images["path"], codes, strict=True):
        shape, bg = world.FACTORS["shape"][c[k_s]], world.FACTORS["background"][c[k_b]]
        lines.append(f"{p},{shape},{shape} on {bg}")
    path.write_text("\n".join(lines) + "\n")
    return codes[:, k_s], codes[:, k_b]


def test_waterbirds_recipe_on_the_planted_world(store, tmp_path, capsys):
    f = tmp_path / "world_groups.csv"
    write_group_file(store, f)
    argv = ["ablate", "--store", str(store), "--tasks", str(f), "--ablate", "none",
            "--random", "0", "--json", "--no-write"]  # fmt: skip
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    (g,) = out["groups"]
    assert g["task"] == "world_groups" and len(g["before"]["groups"]) == 16
    assert sum(x["count"] for x in g["before"]["groups"]) == out["n_eval"]
    assert g["worst_before"] <= g["mean_before"]
    argv = ["spurious", "--store", str(store), "--tasks", str(f), "--repair", "2",
            "--spurious", "a black background,a grey background,a navy background",
            "--core", "a circle,a square,a triangle,a cross", "--random", "3"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "held out" in text or "no head raises" in text
    with open_store(store) as r:
        runs = r.query("SELECT task, tasks_source FROM spurious_runs")
    assert "world_groups" in set(runs.task)


def test_bad_inputs_are_one_line_errors(store, tmp_path, capsys):
    assert main(["spurious", "--store", str(store), "--tasks", "factors"]) == 2
    assert "no task has groups" in capsys.readouterr().err
    assert main(["spurious", "--store", str(store), "--spurious", "water"]) == 2
    assert "both --spurious and --core" in capsys.readouterr().err
    f = tmp_path / "bad.csv"
    f.write_text("nowhere.png,bird,land\nelse.png,fish,water\n")
    assert main(["spurious", "--store", str(store), "--tasks", str(f)]) == 2
    assert "no store image" in capsys.readouterr().err
