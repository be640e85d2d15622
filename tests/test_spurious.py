"""Groups, the spurious-head finder, the greedy repair and its held-out split (math on planted
decompositions), the biased world, and grouped task files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from engine.core import spurious as sp
from engine.core.ablation import AblationScorer, Ablator, random_baseline
from engine.core.components import Component, ComponentSet
from engine.core.groups import GroupLabels, group_ablation, group_scores, score_groups
from engine.core.zeroshot import ZeroShotTask
from engine.errors import UserError
from engine.sources import tasks as tasks_mod
from engine.sources import world

pytestmark = pytest.mark.unit

# ------------------------------------------------------------------------------- biased world


def test_biased_world_is_a_pure_function_of_seed_and_index():
    a = world.generate(0, 12, seed=3, bias=world.BIAS)
    b = world.generate(0, 5, seed=3, bias=world.BIAS)
    c = world.generate(5, 12, seed=3, bias=world.BIAS)
    np.testing.assert_array_equal(a.images, np.concatenate([b.images, c.images]))
    np.testing.assert_array_equal(a.codes, np.concatenate([b.codes, c.codes]))
    for i in range(12):
        np.testing.assert_array_equal(world.sample_codes(i, 3, world.BIAS), a.codes[i])


def test_biased_world_pairs_core_and_spurious_at_the_declared_rate():
    bias = world.BIAS
    n = 4000
    codes = np.stack([world.sample_codes(i, 7, bias) for i in range(n)])
    plain = np.stack([world.sample_codes(i, 7) for i in range(n)])
    k_core = world.FACTOR_NAMES.index(bias.core)
    k_sp = world.FACTOR_NAMES.index(bias.spurious)
    major = codes[:, k_sp] == codes[:, k_core] % len(world.FACTORS[bias.spurious])
    assert abs(major.mean() - bias.strength) < 0.02  # binomial sd ~ 0.005
    # the minority values are spread over the other backgrounds
    minority = codes[~major, k_sp]
    assert len(np.unique(minority)) == len(world.FACTORS[bias.spurious])
    # every other factor is the balanced world's own
    others = [k for k in range(len(world.FACTORS)) if k != k_sp]
    np.testing.assert_array_equal(codes[:, others], plain[:, others])
    # and the balanced world is balanced (the evaluation set)
    pm = plain[:, k_sp] == plain[:, k_core] % 4
    assert abs(pm.mean() - 0.25) < 0.03


def test_bias_rejects_bad_declarations():
    with pytest.raises(ValueError, match="two different factors"):
        world.Bias("shape", "shape", 0.9)
    with pytest.raises(ValueError, match="not in"):
        world.Bias("shape", "background", 1.5)


# ------------------------------------------------------------------------------------ groups


def test_group_scores_known_answer_and_unlabelled_left_out():
    labels = np.array([0, 0, 1, 1, 1, -1, 0])
    groups = GroupLabels(np.array([0, 0, 1, 1, 2, 2, -1]), ("a", "b", "c", "d"))
    pred = np.array([0, 1, 1, 1, 0, 0, 0])
    s = group_scores(pred, labels, groups)
    np.testing.assert_allclose(s.accuracy[:3], [0.5, 1.0, 0.0])
    assert np.isnan(s.accuracy[3]) and s.count.tolist() == [2, 2, 1, 0]
    assert s.worst == 0.0 and s.worst_group == "c"
    assert s.mean == pytest.approx(3 / 5)  # images 5 (label -1) and 6 (group -1) left out
    assert s.balanced == pytest.approx(0.5)
    with pytest.raises(ValueError, match="group indices"):
        GroupLabels(np.array([0, 4]), ("a", "b"))


def planted(n=800, seed=0, noise=0.3):
    """A decomposition where head L1H0 carries the core class, L1H1 the background (a shortcut
    the class texts share), L0H0/L0H1 noise. Balanced: background independent of class.

    Returns output [image, d_embed], components, task, groups, spurious/core text embeddings."""
    rng = np.random.default_rng(seed)
    y = rng.integers(2, size=n)  # class
    b = rng.integers(2, size=n)  # background
    eye = np.eye(4, dtype=np.float32)
    core = (2 * y - 1 + noise * rng.normal(size=n)).astype(np.float32)[:, None]
    back = (1.5 * (2 * b - 1) + noise * rng.normal(size=n)).astype(np.float32)[:, None]
    n0 = rng.normal(size=(n, 1)).astype(np.float32) * 0.5
    n1 = rng.normal(size=(n, 1)).astype(np.float32) * 0.5
    comps = ComponentSet(
        [
            Component("L0H0", "head", 0, 0, coord=n0, basis=eye[2:3]),
            Component("L0H1", "head", 0, 1, coord=n1, basis=eye[3:4]),
            Component("L1H0", "head", 1, 0, coord=core, basis=eye[0:1]),
            Component("L1H1", "head", 1, 1, coord=back, basis=eye[1:2]),
        ]
    )
    output = comps.total()
    cls = np.array([[-1, -1, 0, 0], [1, 1, 0, 0]], np.float32)  # the texts lean on background
    task = ZeroShotTask("y", ("zero", "one"), y, cls)
    groups = GroupLabels(2 * y + b, ("0/0", "0/1", "1/0", "1/1"))
    return output, comps, task, groups, eye[1:2] * 3, eye[0:1]


def test_planted_shortcut_shows_as_worst_group_gap_and_ablation_closes_it():
    output, comps, task, groups, *_ = planted()
    fit, ev = np.arange(0, 800, 2), np.arange(1, 800, 2)
    g = group_ablation(output, comps, ["L1H1"], [["L0H0"]], [task], {"y": groups}, fit, ev)["y"]
    assert g.before.worst < 0.2 and g.before.mean == pytest.approx(0.5, abs=0.06)
    assert g.after.worst > 0.95 and g.after.mean > 0.97
    assert g.random[0].worst < 0.2  # a noise head changes nothing
    # the ablation result of score_groups equals scoring the ablated embeddings directly
    scorer = AblationScorer(Ablator(output, comps, fit, ev), [task])
    s = score_groups(scorer, ["L1H1"], {"y": groups})["y"]
    emb = Ablator(output, comps, fit, ev).ablate(["L1H1"])
    pred = (emb @ task.class_emb.T).argmax(1)
    direct = group_scores(pred, task.labels[ev], groups.subset(ev))
    np.testing.assert_array_equal(s.accuracy, direct.accuracy)


def test_finder_ranks_the_shortcut_head_first_by_effect_and_alignment():
    output, comps, task, groups, spur, core = planted()
    split_ = sp.spurious_split(len(output), seed=1)
    align = sp.head_alignment(comps, split_.fitting, spur, core)
    assert align["L1H1"][2] == pytest.approx(1.0) and align["L1H0"][2] == pytest.approx(-1.0)
    assert align["L0H0"][2] == pytest.approx(0.0)
    before, findings = sp.head_effects(output, comps, task, groups, split_, align)
    assert findings[0].name == "L1H1" and findings[0].effect > 0.8
    assert before.worst < 0.2
    removing_core = next(f for f in findings if f.name == "L1H0")
    assert removing_core.effect <= 0.0


def test_greedy_repair_picks_the_shortcut_and_stops():
    output, comps, task, groups, *_ = planted()
    split_ = sp.spurious_split(len(output), seed=0)
    steps = sp.greedy_repair(output, comps, task, groups, split_, k=3)
    assert [s.added for s in steps] == ["L1H1"]  # nothing else raises the worst group
    assert steps[0].spec == "L1H1" and steps[0].worst > 0.95
    # the mean-drop guard: forbid any drop and the core head is never chosen
    steps = sp.greedy_repair(
        output, comps, task, groups, split_, k=2, candidates=["L1H0", "L0H0"], max_mean_drop=0.0
    )
    assert "L1H0" not in [s.added for s in steps]
    with pytest.raises(ValueError, match="k must be"):
        sp.greedy_repair(output, comps, task, groups, split_, k=0)


def test_spurious_split_is_disjoint_deterministic_and_complete():
    s = sp.spurious_split(1001, 0.5, seed=4)
    parts = [s.means, s.score, s.held_out]
    assert sum(len(p) for p in parts) == 1001
    assert np.unique(np.concatenate(parts)).size == 1001
    assert abs(len(s.held_out) - 500) <= 1 and abs(len(s.means) - len(s.score)) <= 1
    t = sp.spurious_split(1001, 0.5, seed=4)
    for a, b in zip(parts, [t.means, t.score, t.held_out], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(s.fitting, np.sort(np.concatenate([s.means, s.score])))


def test_no_choice_sees_the_held_out_images():
    """Scramble everything about the held-out images (embeddings, every head's coordinates,
    labels, groups): the alignment, the ranking and the repair do not change."""
    output, comps, task, groups, spur, core = planted(seed=3)
    split_ = sp.spurious_split(len(output), seed=2)
    h = split_.held_out
    rng = np.random.default_rng(9)

    def scrambled():
        out = output.copy()
        out[h] = rng.normal(size=(len(h), out.shape[1])) * 50
        new = []
        for c in comps:
            coord = c.coord.copy()
            coord[h] = rng.normal(size=(len(h), coord.shape[1])) * 50
            new.append(Component(c.name, c.kind, c.layer, c.head, coord=coord, basis=c.basis))
        y = task.labels.copy()
        y[h] = rng.integers(-1, 2, size=len(h))
        g = groups.groups.copy()
        g[h] = rng.integers(-1, 4, size=len(h))
        t = ZeroShotTask(task.name, task.class_names, y, task.class_emb)
        return out, ComponentSet(new), t, GroupLabels(g, groups.names)

    def choices(out, cs, t, g):
        align = sp.head_alignment(cs, split_.fitting, spur, core)
        before, findings = sp.head_effects(out, cs, t, g, split_, align)
        steps = sp.greedy_repair(out, cs, t, g, split_, k=3, max_mean_drop=None)
        return align, before.to_dict(), [f.to_dict() for f in findings], [s.heads for s in steps]

    assert choices(output, comps, task, groups) == choices(*scrambled())
    # while the held-out check itself does read them (the scramble is not a no-op)
    s_out, s_comps, s_task, s_groups = scrambled()
    a = group_ablation(output, comps, ["L1H1"], [], [task], {"y": groups}, split_.means, h)
    b = group_ablation(s_out, s_comps, ["L1H1"], [], [s_task], {"y": s_groups}, split_.means, h)
    assert a["y"].after.to_dict() != b["y"].after.to_dict()


def test_repair_beats_random_heads_on_held_out_images():
    output, comps, task, groups, *_ = planted(n=1200, seed=5)
    split_ = sp.spurious_split(len(output), seed=0)
    steps = sp.greedy_repair(output, comps, task, groups, split_, k=1)
    chosen = list(steps[-1].heads)
    draws = random_baseline(comps, chosen, draws=5, seed=0)
    g = group_ablation(
        output, comps, chosen, draws, [task], {"y": groups}, split_.means, split_.held_out
    )["y"]
    lift = g.after.worst - g.before.worst
    rand_lift = g.random_worst.mean() - g.before.worst
    assert lift > 0.8 and lift >= 2 * max(rand_lift, 0.0)


# -------------------------------------------------------------------------------- task files


class FakeReader:
    """The two reader methods `task_specs` uses."""

    def __init__(self, paths, factors=None):
        self._paths = paths
        self._factors = factors

    def factors(self):
        return self._factors

    def images(self):
        return pd.DataFrame({"path": self._paths, "class": [None] * len(self._paths)})


def test_group_file_maps_paths_to_class_and_group(tmp_path):
    f = tmp_path / "waterbirds.csv"
    f.write_text(
        "path,class,group\n"
        "001.Albatross/a.jpg,waterbird,waterbird / water\n"
        "./002.Sparrow/b.jpg,landbird,landbird / water\n"
        "002.Sparrow/c.jpg,landbird,landbird / land\n"
        "elsewhere/x.jpg,landbird,landbird / land\n"
    )
    paths = ["001.Albatross/a.jpg", "002.Sparrow/b.jpg", "002.Sparrow/c.jpg", "unlisted.jpg"]
    source, specs = tasks_mod.task_specs(FakeReader(paths), str(f))
    (t,) = specs
    assert t.name == "waterbirds" and t.class_names == ["landbird", "waterbird"]
    assert t.labels.tolist() == [1, 0, 0, -1]
    assert [t.group_names[g] if g >= 0 else None for g in t.groups] == [
        "waterbird / water", "landbird / water", "landbird / land", None
    ]  # fmt: skip
    assert t.prompts[0][0] == "a photo of a landbird."


def test_bad_group_files_are_one_line_errors(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("a.jpg,bird,\nb.jpg,bird,x\n")
    with pytest.raises(UserError, match="PATH,CLASS,GROUP"):
        tasks_mod.task_specs(FakeReader(["a.jpg"]), str(f))
    f.write_text("z.jpg,bird,g1\ny.jpg,cat,g2\n")
    with pytest.raises(UserError, match="no store image"):
        tasks_mod.task_specs(FakeReader(["a.jpg"]), str(f))
    with pytest.raises(UserError, match="demo-world store"):
        tasks_mod.task_specs(FakeReader(["a.jpg"]), "groups")


def test_world_group_task_is_shape_by_background():
    names = list(world.FACTORS)
    codes = np.stack([world.sample_codes(i, 0) for i in range(50)])
    _, (t,) = tasks_mod.task_specs(FakeReader([""] * 50, (names, codes)), "groups")
    assert t.name == "shape" and len(t.group_names) == 16
    k_s, k_b = names.index("shape"), names.index("background")
    for i in range(50):
        assert t.group_names[t.groups[i]] == (
            f"{world.FACTORS['shape'][codes[i, k_s]]} / {world.FACTORS['background'][codes[i, k_b]]}"
        )
    np.testing.assert_array_equal(t.labels, codes[:, k_s])
