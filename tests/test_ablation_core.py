"""Exact mean-ablation on a synthetic additive decomposition (engine.core.ablation; math only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.core.ablation import (
    VALID_FORMS,
    AblationScorer,
    Ablator,
    Component,
    ComponentSet,
    format_ablation_spec,
    mean_ablate,
    parse_ablation_spec,
    random_baseline,
    run_ablation,
    split,
)
from engine.core.zeroshot import ZeroShotTask, evaluate
from engine.errors import UserError

pytestmark = pytest.mark.unit

N_LAYERS, STORED, N_HEADS, D_HEAD, D_EMBED = 4, (2, 3), 3, 4, 16


def orthonormal_rows(rng, k, d, within=None):
    """[k, d] orthonormal rows, optionally inside the row space of `within` [m, d]."""
    if within is None:
        q, _ = np.linalg.qr(rng.standard_normal((d, k)))
        return q.T
    q, _ = np.linalg.qr(within.T @ rng.standard_normal((within.shape[0], k)))
    return q.T


def make_arrays(rng, n=120):
    """Every term of a decomposition with the store's shapes; output is their exact sum."""
    a = dict(
        coord=rng.standard_normal((n, len(STORED), N_HEADS, D_HEAD)).astype(np.float32),
        basis=np.stack(
            [
                np.stack([orthonormal_rows(rng, D_HEAD, D_EMBED) for _ in range(N_HEADS)])
                for _ in STORED
            ]
        ).astype(np.float32),
        head_layers=STORED,
        mlp=rng.standard_normal((n, N_LAYERS, D_EMBED)).astype(np.float32),
        attn=rng.standard_normal((n, N_LAYERS - len(STORED), D_EMBED)).astype(np.float32),
        attn_layers=[l for l in range(N_LAYERS) if l not in STORED],
        embed=rng.standard_normal((n, D_EMBED)).astype(np.float32),
        attn_bias=rng.standard_normal((len(STORED), D_EMBED)).astype(np.float32),
        std=rng.uniform(0.5, 2.0, n).astype(np.float32),
        ln_bias=rng.standard_normal(D_EMBED).astype(np.float32),
    )
    return a


def make_set(seed=0, n=120):
    rng = np.random.default_rng(seed)
    cs = ComponentSet.from_arrays(**make_arrays(rng, n), n_layers=N_LAYERS)
    return cs, cs.total()


def random_task(rng, n, n_classes=5, name="t"):
    labels = rng.integers(0, n_classes, n)
    labels[rng.random(n) < 0.1] = -1
    emb = rng.standard_normal((n_classes, D_EMBED)).astype(np.float32)
    return ZeroShotTask(name, tuple(f"c{i}" for i in range(n_classes)), labels, emb)


def test_from_arrays_names_and_sum():
    cs, out = make_set()
    assert len(cs) == 6 + 4 + 2 + 1 + 2 + 1
    assert cs.names[0] == "embed" and cs.names[-1] == "ln_bias"
    assert cs.names[1:3] == ["L0.attn", "L0.mlp"]
    assert cs.head_layers == [2, 3] and cs.n_layers == 4
    assert "L2H1" in cs and cs["L2.attn_bias"].form == "const"
    assert np.allclose(cs.total(np.arange(5)), out[:5], atol=1e-5)


def test_ablate_nothing_is_identity_and_plain_accuracy():
    cs, out = make_set()
    fit, ev = split(len(out), 0.5, seed=1)
    assert np.array_equal(mean_ablate(out, cs, [], fit, ev), out[ev])
    rng = np.random.default_rng(3)
    task = random_task(rng, len(out))
    res = run_ablation(out, cs, [], [task], fit, ev, random_draws=3)
    t = res.task("t")
    plain = evaluate(out[ev], task.subset(ev))
    assert t.before == t.after == plain.accuracy
    assert t.n_eval == plain.n_labelled
    assert res.random_draws == () and np.isnan(t.random_mean)
    assert res.n_fit == len(fit) and res.n_eval <= len(ev)


def test_ablate_everything_gives_the_fit_mean_embedding():
    cs, out = make_set()
    fit, ev = split(len(out), 0.4, seed=2)
    names = cs.select("all")
    assert set(names) == set(cs.names)  # every term, constants included
    abl = mean_ablate(out, cs, names, fit, ev)
    mean = out[fit].astype(np.float64).mean(axis=0)
    assert np.allclose(abl, mean[None], atol=1e-5 * np.abs(mean).max() + 1e-5)
    task = random_task(np.random.default_rng(4), len(out))
    res = run_ablation(out, cs, names, [task], fit, ev, random_draws=0)
    sub = task.subset(ev)
    pred = int(np.argmax(task.class_emb @ mean))
    expect = float(np.mean(sub.labels[sub.labelled] == pred))
    assert res.task("t").after == pytest.approx(expect)


def _pre_ablate(cs, out, a_names, fit):
    """Ablate A on every image (means over fit) and freeze A's terms at their means."""
    allidx = np.arange(len(out))
    new_out = out.astype(np.float64).copy()
    comps = []
    for c in cs:
        if c.name in a_names:
            m = c.term(fit, cs.n_images).astype(np.float64).mean(axis=0)
            new_out -= c.term(allidx, cs.n_images) - m
            comps.append(Component(c.name, c.kind, c.layer, c.head, const=m.astype(np.float32)))
        else:
            comps.append(c)
    return ComponentSet(comps, n_layers=cs.n_layers), new_out.astype(np.float32)


names_strategy = st.lists(st.sampled_from(make_set()[0].names), max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=names_strategy, b=names_strategy, seed=st.integers(0, 2**16))
def test_additivity_a_then_b_equals_union(a, b, seed):
    cs, out = make_set()
    fit, ev = split(len(out), 0.5, seed=seed)
    union = mean_ablate(out, cs, a + b, fit, ev)
    cs_a, out_a = _pre_ablate(cs, out, set(a), fit)
    then_b = mean_ablate(out_a, cs_a, b, fit, ev)
    assert np.allclose(then_b, union, atol=1e-4)
    # disjoint pieces add: delta(A) + delta(B \ A) = delta(A ∪ B)
    abl = Ablator(out, cs, fit, ev)
    rest = [n for n in b if n not in a]
    assert np.allclose(abl.delta(a) + abl.delta(rest), abl.delta(a + b), atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 3000), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 2**31))
def test_split_disjoint_deterministic_sizes(n, fraction, seed):
    fit, ev = split(n, fraction, seed)
    fit2, ev2 = split(n, fraction, seed)
    assert np.array_equal(fit, fit2) and np.array_equal(ev, ev2)
    assert np.intersect1d(fit, ev).size == 0
    assert np.array_equal(np.union1d(fit, ev), np.arange(n))
    assert len(fit) == min(max(round(fraction * n), 1), n - 1)
    assert np.all(np.diff(fit) > 0) and np.all(np.diff(ev) > 0)


def test_split_rejects_bad_input():
    for n, f in [(1, 0.5), (10, 0.0), (10, 1.0), (10, -0.2)]:
        with pytest.raises(UserError):
            split(n, f)
    assert not np.array_equal(split(100, 0.5, 0)[0], split(100, 0.5, 1)[0])


def test_overlapping_split_is_refused():
    cs, out = make_set()
    with pytest.raises(ValueError, match="overlap"):
        mean_ablate(out, cs, ["embed"], np.arange(10), np.arange(5, 20))


def planted(seed=0, n=600, n_classes=3, signal="L3H1"):
    """One head carries the task: its term is a class direction; every other term (and every
    other head's basis) is orthogonal to the class directions."""
    rng = np.random.default_rng(seed)
    a = make_arrays(rng, n)
    li, h = STORED.index(int(signal[1])), int(signal[3])
    s_basis = orthonormal_rows(rng, D_HEAD, D_EMBED)  # the signal subspace S
    perp = np.eye(D_EMBED) - s_basis.T @ s_basis  # projector onto S's complement
    for lj in range(len(STORED)):
        for hj in range(N_HEADS):
            a["basis"][lj, hj] = orthonormal_rows(rng, D_HEAD, D_EMBED, within=perp)
    a["basis"][li, h] = s_basis
    q = rng.standard_normal((n_classes, D_HEAD))
    class_emb = (q @ s_basis).astype(np.float32)  # class directions inside S
    labels = np.arange(n) % n_classes
    cn = class_emb / np.linalg.norm(class_emb, axis=1, keepdims=True)
    a["coord"][:, li, h] = 5.0 * (cn[labels] @ s_basis.T) + 0.01 * rng.standard_normal((n, D_HEAD))
    for k in ("mlp", "attn", "embed"):
        a[k] = (a[k] @ perp).astype(np.float32)
    a["attn_bias"] = (a["attn_bias"] @ perp).astype(np.float32)
    a["ln_bias"] = (a["ln_bias"] @ perp).astype(np.float32)
    cs = ComponentSet.from_arrays(**a, n_layers=N_LAYERS)
    task = ZeroShotTask("planted", tuple("abc"[:n_classes]), labels, class_emb)
    return cs, cs.total(), task


def test_planted_head_alone_carries_the_task():
    cs, out, task = planted()
    fit, ev = split(len(out), 0.5, seed=0)
    res = run_ablation(out, cs, ["L3H1"], [task], fit, ev, random_draws=5, seed=0)
    t = res.task("planted")
    assert t.before == 1.0
    counts = np.bincount(task.labels[ev], minlength=3) / len(ev)
    assert t.after <= counts.max() + 1e-9 and abs(t.after - 1 / 3) < 0.05  # chance
    assert np.all(t.random == 1.0) and t.random_best == 1.0 and t.random_sd == 0.0
    assert all("L3H1" not in d for d in res.random_draws)
    for name in cs.names:  # any other component: exactly unchanged
        if name != "L3H1":
            other = run_ablation(out, cs, [name], [task], fit, ev, random_draws=0)
            assert other.task("planted").after == 1.0, name
    json.dumps(res.to_dict())  # JSON-ready


def dense_heads(cs):
    """The same decomposition with every head materialised in d_embed."""
    comps = [
        Component(c.name, c.kind, c.layer, c.head, dense=c.term(slice(None)))
        if c.form == "coord"
        else c
        for c in cs
    ]
    return ComponentSet(comps, n_layers=cs.n_layers)


@settings(max_examples=25, deadline=None)
@given(names=names_strategy, seed=st.integers(0, 1000))
def test_coordinate_path_equals_dense_computation(names, seed):
    cs, out = make_set(seed % 7)
    fit, ev = split(len(out), 0.5, seed=seed)
    coords = mean_ablate(out, cs, names, fit, ev)
    dense = mean_ablate(out, dense_heads(cs), names, fit, ev)
    scale = np.abs(out).max()
    assert np.abs(coords - dense).max() <= 1e-5 * scale


@pytest.mark.parametrize("n_classes", [5, 64])  # 64 > d_embed: the d_embed route is chosen too
def test_scorer_logits_match_explicit_embeddings(n_classes):
    cs, out = make_set(1, n=200)
    rng = np.random.default_rng(5)
    fit, ev = split(len(out), 0.5, seed=3)
    task = random_task(rng, len(out), n_classes)
    scorer = AblationScorer(Ablator(out, cs, fit, ev), [task])
    for names in (["L2H0"], cs.select("layers:2-3"), ["L3H2", "L1.mlp"], ["L2.attn_bias"]):
        emb = mean_ablate(out, cs, names, fit, scorer.ablator.eval_idx)
        want = emb @ scorer.cls
        got = scorer.logits(names)
        assert np.allclose(got, want, atol=1e-4 * np.abs(want).max())
    # the per-head coordinate cache changes nothing (second call reads it; budget 0 bypasses it)
    uncached = AblationScorer(Ablator(out, cs, fit, ev, cache_bytes=0), [task])
    names = cs.select("layers:3+L2H1")
    assert np.array_equal(scorer.logits(names), uncached.logits(names))
    assert uncached.ablator._coords == {} and len(scorer.ablator._coords) == 6


def test_random_baseline_same_layers_deterministic():
    cs, _ = make_set()
    like = ["L2H0", "L3H1", "L3H2", "L1.mlp"]
    d1 = random_baseline(cs, like, draws=8, seed=4)
    assert d1 == random_baseline(cs, like, draws=8, seed=4)
    assert len(d1) == 8
    for d in d1:
        heads = [n for n in d if "H" in n]
        assert "L1.mlp" in d
        assert sum(n.startswith("L2H") for n in heads) == 1
        assert sum(n.startswith("L3H") for n in heads) == 2
        assert "L2H0" not in d  # drawn among the layer's other heads
    # layer 3: two chosen leave one other head, too few -> drawn from all of layer 3's heads
    assert {n for d in d1 for n in d if n.startswith("L3H")} == {"L3H0", "L3H1", "L3H2"}
    assert random_baseline(cs, ["L1.mlp"], draws=3) == []  # no heads: no baseline


def test_component_set_validation():
    cs, _ = make_set()
    with pytest.raises(ValueError, match="duplicate"):
        ComponentSet([cs["embed"], cs["embed"]])
    with pytest.raises(ValueError, match="exactly one"):
        Component("x", "mlp")
    with pytest.raises(UserError, match="does not hold"):
        ComponentSet([c for c in cs if c.kind != "attn_bias"], n_layers=4).select("all-but-last:1")


# ---- spec parser ------------------------------------------------------------------------------

HEADS = [(l, h) for l in STORED for h in range(N_HEADS)]
LABELS = {(2, 0): "Colour", (3, 1): "colour ", (3, 2): "shape"}


def parse(text):
    return parse_ablation_spec(text, HEADS, LABELS, N_LAYERS, STORED)


def test_spec_forms():
    assert parse("L2H0,L3H1") == ["L2H0", "L3H1"]
    assert parse("l3h1 + L2H0 + L2H0") == ["L2H0", "L3H1"]
    assert parse("label:colour") == ["L2H0", "L3H1"]
    assert parse("label:SHAPE+L2H1") == ["L2H1", "L3H2"]
    assert parse("layers:3") == ["L3H0", "L3H1", "L3H2"]
    assert parse("layers:2-3") == [f"L{l}H{h}" for l in STORED for h in range(N_HEADS)]
    assert parse("mlp") == [f"L{l}.mlp" for l in range(4)]
    assert parse("mlp:1-2+embed") == ["embed", "L1.mlp", "L2.mlp"]
    assert parse("none") == []
    assert parse("all-but-last:2") == ["embed", "L0.attn", "L0.mlp", "L1.attn", "L1.mlp"] + [
        "L2.mlp",
        "L3.mlp",
    ]
    assert parse("all-but-last:1") == (
        ["embed", "L0.attn", "L0.mlp", "L1.attn", "L1.mlp"]
        + ["L2H0", "L2H1", "L2H2", "L2.attn_bias", "L2.mlp", "L3.mlp"]
    )
    assert "ln_bias" not in parse("all-but-last:4") and "ln_bias" in parse("all")
    assert parse("L1.attn,L2.attn_bias,ln_bias") == ["L1.attn", "L2.attn_bias", "ln_bias"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(make_set()[0].names), max_size=12))
def test_spec_round_trip(names):
    spec = format_ablation_spec(names)
    assert parse(spec) == sorted(set(names), key=make_set()[0].names.index)
    assert parse(format_ablation_spec(parse(spec))) == parse(spec)


@pytest.mark.parametrize(
    "spec, why",
    [
        ("", "empty"),
        ("L2H0,,L3H1", "empty item"),
        ("L1H0", "not a stored head"),
        ("L2H7", "not a stored head"),
        ("label:texture", "labels: colour, shape"),
        ("layers:0-2", "not stored"),
        ("layers:3-2", "low to high"),
        ("layers:x", "A or A-B"),
        ("mlp:0-9", "0-3"),
        ("all-but-last:0", "1-4"),
        ("all-but-last:two", "whole number"),
        ("L2.attn", "heads are stored"),
        ("L0.attn_bias", "inside L0.attn"),
        ("L7.mlp", "layers 0-3"),
        ("heads:3", "unknown form"),
    ],
)
def test_spec_errors_are_one_line_user_errors(spec, why):
    with pytest.raises(UserError) as e:
        parse(spec)
    msg = str(e.value)
    assert "\n" not in msg and why in msg and VALID_FORMS in msg


def test_select_uses_the_sets_heads_and_labels():
    cs, _ = make_set()
    assert cs.select("label:colour", LABELS) == ["L2H0", "L3H1"]
    assert cs.select("all-but-last:1") == parse("all-but-last:1")
