"""The Ablation page's group panel: group accuracies of the ablation shown (a chart of each group
before/after, worst-group and mean), and "find spurious heads" (engine.core.spurious on the
fitting half, the repair checked on the held-out half); one click shows the repair as the page's
ablation. Read-only: nothing is written to the store.

Grouped tasks: the demo world's planted-shortcut task (`--tasks groups`) on a world store.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from engine.core import spurious as sp
from engine.core.ablation import random_baseline
from engine.core.groups import GroupLabels, group_ablation
from engine.core.zeroshot import ZeroShotTask
from engine.errors import UserError
from engine.sources import world
from engine.sources.tasks import task_specs

OVERRIDE = "ablation_spec_from_spurious"  # session key: the spec the finder's click set
FOUND = "spurious_found"  # session key: the finder's last result


def override(spec: str) -> str:
    """The page's spec, or the repair a click on "Show this ablation" chose (until cleared)."""
    chosen = st.session_state.get(OVERRIDE)
    if not chosen:
        return spec
    c1, c2 = st.columns([4, 1])
    c1.info(f"Showing the repair found by *Find spurious heads*: `{chosen}`")
    if c2.button("Back to my choice"):
        st.session_state.pop(OVERRIDE, None)
        st.rerun()
    return chosen


@st.cache_data(show_spinner=False, max_entries=4)
def _grouped(_store, key: str):
    """The store's grouped task spec, or None (only world stores have one here)."""
    if _store.factors() is None:
        return None
    try:
        return task_specs(_store, "groups")[1][0]
    except UserError:
        return None


def render(store, key: str, ablated, draws: int, split: float, seed: int, components, embed):
    """Group accuracies of the ablation of the component names `ablated` and the finder. `components()` returns (output, comps);
    `embed(texts)` returns unit text embeddings [text, d_embed] (the page's cached model)."""
    g = _grouped(store, key)
    if g is None:
        return
    from engine.core import ablation

    output, comps = components()
    task = ZeroShotTask(
        g.name, tuple(g.class_names), g.labels, _class_emb(embed, tuple(map(tuple, g.prompts)))
    )
    groups = GroupLabels(g.groups, tuple(g.group_names))
    st.subheader(f"Groups: {g.name} by {world.BIAS.spurious}")
    names = list(ablated)
    fit, ev = ablation.split(len(output), split, seed)
    rand = random_baseline(comps, names, draws=draws, seed=seed)
    ga = group_ablation(output, comps, names, rand, [task], {task.name: groups}, fit, ev)[task.name]
    _group_chart(ga)
    _finder(output, comps, task, groups, split, seed, embed)


def _class_emb(embed, prompts: tuple[tuple[str, ...], ...]) -> np.ndarray:
    from engine.core.zeroshot import class_embeddings

    return class_embeddings(lambda t: embed(list(t)), prompts=[list(p) for p in prompts])


def _group_chart(ga) -> None:
    c = st.columns(4)
    c[0].metric("worst-group before", f"{ga.before.worst:.3f}", help=ga.before.worst_group)
    c[1].metric(
        "worst-group after",
        f"{ga.after.worst:.3f}",
        f"{ga.after.worst - ga.before.worst:+.3f}",
        help=ga.after.worst_group,
    )
    c[2].metric("mean before", f"{ga.before.mean:.3f}")
    c[3].metric("mean after", f"{ga.after.mean:.3f}", f"{ga.after.mean - ga.before.mean:+.3f}")
    rows = pd.DataFrame(
        {
            "group": list(ga.before.names),
            "images": ga.before.count,
            "before": ga.before.accuracy,
            "after": ga.after.accuracy,
            "random": (
                np.nanmean([r.accuracy for r in ga.random], axis=0)
                if ga.random
                else np.full(len(ga.before.names), np.nan)
            ),
        }
    )
    rows = rows[rows["images"] > 0]
    long = rows.melt(id_vars="group", value_vars=["before", "after"], var_name="when",
                     value_name="accuracy")  # fmt: skip
    chart = (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("group:N", sort=list(rows["group"]), title=None),
            xOffset=alt.XOffset("when:N", sort=["before", "after"]),
            y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("when:N", sort=["before", "after"], title=None),
            tooltip=["group", "when", alt.Tooltip("accuracy:Q", format=".3f")],
        )
    )
    layers = [chart]
    if rows["random"].notna().any():
        layers.append(
            alt.Chart(rows)
            .mark_point(color="black", shape="diamond", filled=True)
            .encode(x=alt.X("group:N", sort=list(rows["group"])), y="random:Q",
                    tooltip=[alt.Tooltip("random:Q", format=".3f")])
        )  # fmt: skip
    st.altair_chart(alt.layer(*layers), width="stretch")
    st.caption("Accuracy of each group before and after; black: random heads' mean after.")


def _finder(output, comps, task, groups, split, seed, embed) -> None:
    with st.expander("Find spurious heads", expanded=False):
        st.caption(
            "Ranks heads by the worst-group accuracy gained when each is removed alone and by "
            f"the alignment of its variance with the {world.BIAS.spurious} vs {world.BIAS.core} "
            "texts, on the fitting half; the repair (up to K heads, greedy) is checked on the "
            "held-out half beside K random heads. Same as `python -m engine spurious --repair K`."
        )
        k = st.slider("K (heads to repair)", 1, 8, 4)
        state = (len(output), split, seed, k)
        if st.button("Find spurious heads"):
            st.session_state[FOUND] = (state, _find(output, comps, task, groups, split, seed, k,
                                                    embed))  # fmt: skip
        found = st.session_state.get(FOUND)
        if found is None or found[0] != state:
            return
        findings, steps, h = found[1]
        table = pd.DataFrame([f.to_dict() for f in findings[:10]])
        st.dataframe(
            table[["name", "effect", "worst_after", "mean_after", "alignment"]],
            hide_index=True,
            width="stretch",
            column_config={
                c: st.column_config.NumberColumn(format="%.3f")
                for c in ("effect", "worst_after", "mean_after", "alignment")
            },
        )
        if not steps:
            st.info("No head raises the fitting half's worst-group accuracy.")
            return
        rw = h.random_worst
        st.markdown(
            f"Repair `{steps[-1].spec}`: held-out worst-group {h.before.worst:.3f} → "
            f"**{h.after.worst:.3f}** (K random heads: {rw.mean() if rw.size else float('nan'):.3f}); "
            f"mean {h.before.mean:.3f} → {h.after.mean:.3f}."
        )
        if st.button("Show this ablation", type="primary"):
            st.session_state[OVERRIDE] = steps[-1].spec
            st.rerun()


def _find(output, comps, task, groups, split, seed, k, embed):
    """(findings, repair steps, held-out GroupAblation or None): the `spurious` command's math."""
    s = sp.spurious_split(len(output), split, seed)
    spur = [t for ts in world.value_texts(world.BIAS.spurious) for t in ts]
    core = [t for ts in world.value_texts(world.BIAS.core) for t in ts]
    align = sp.head_alignment(comps, s.fitting, embed(spur), embed(core))
    _, findings = sp.head_effects(output, comps, task, groups, s, align)
    steps = sp.greedy_repair(output, comps, task, groups, s, k)
    if not steps:
        return findings, steps, None
    chosen = list(steps[-1].heads)
    rand = random_baseline(comps, chosen, draws=10, seed=seed)
    h = group_ablation(
        output, comps, chosen, rand, [task], {task.name: groups}, s.means, s.held_out
    )
    return findings, steps, h[task.name]
