"""The Ablation page's group panel: group accuracies of the ablation shown (a chart of each group
before/after, worst-group and mean), and "find spurious heads" (`engine.session.spurious`: the
finder on the fitting half, the repair checked on the held-out half, as `engine spurious` does).
A checkbox shows the repair as the page's ablation. Read-only: nothing is written to the store.

Shown for a store with a grouped task (the demo world's shape-by-background task).
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import stores
from engine.session import spurious as spur
from engine.sources import world


@st.cache_data(show_spinner="Finding spurious heads…", max_entries=8)
def _find(key: str, k: int, split: float, seed: int):
    s = stores.session(key)
    g = spur.grouped_task(s)
    return None if g is None else spur.find_spurious(s, g, k=k, split=split, seed=seed)


@st.cache_data(show_spinner=False, max_entries=32)
def _groups(key: str, names: tuple[str, ...], draws: int, split: float, seed: int):
    s = stores.session(key)
    g = spur.grouped_task(s)
    return (
        None if g is None else spur.group_ablation(s, g, names, draws=draws, split=split, seed=seed)
    )


def finder(store, key: str, split: float, seed: int) -> str | None:
    """The "Find spurious heads" expander; returns the repair's spec when the user chose to show
    it as the page's ablation, else None."""
    if spur.grouped_task(store) is None:
        return None
    with st.expander("Find spurious heads", expanded=False):
        st.caption(
            "Ranks heads by the worst-group accuracy gained when each is removed alone and by "
            f"the alignment of its variance with the {world.BIAS.spurious} vs {world.BIAS.core} "
            "texts, on the fitting half; the repair (up to K heads, greedy) is checked on the "
            "held-out half beside K random heads. Same as `python -m engine spurious --repair K`."
        )
        k = st.slider("K (heads to repair)", 1, 8, 4)
        if not st.checkbox("Find spurious heads", help="a few seconds of arithmetic"):
            return None
        f = _find(key, k, split, seed)
        table = pd.DataFrame([x.to_dict() for x in f.findings[:10]])
        st.dataframe(
            table[["name", "effect", "worst_after", "mean_after", "alignment"]],
            hide_index=True,
            width="stretch",
            column_config={
                c: st.column_config.NumberColumn(format="%.3f")
                for c in ("effect", "worst_after", "mean_after", "alignment")
            },
        )
        if f.held_out is None:
            st.info("No head raises the fitting half's worst-group accuracy.")
            return None
        h = f.held_out
        rw = h.random_worst
        st.markdown(
            f"Repair `{f.spec}`: held-out worst-group {h.before.worst:.3f} → "
            f"**{h.after.worst:.3f}** (K random heads: {rw.mean() if rw.size else float('nan'):.3f}); "
            f"mean {h.before.mean:.3f} → {h.after.mean:.3f}."
        )
        if st.checkbox("Show this ablation", help="the repair becomes the page's ablation"):
            st.info(f"Showing the repair found by *Find spurious heads*: `{f.spec}`")
            return f.spec
    return None


def render(store, key: str, ablated, draws: int, split: float, seed: int) -> None:
    """Group accuracies of the ablation of the component names `ablated`."""
    g = spur.grouped_task(store)
    if g is None:
        return
    ga = _groups(key, tuple(ablated), draws, split, seed)
    st.subheader(f"Groups: {g.task.name} by {world.BIAS.spurious}")
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
    rnd = (
        pd.DataFrame([r.accuracy for r in ga.random]).mean(axis=0).to_numpy()  # NaN: no image
        if ga.random
        else np.full(len(ga.before.names), np.nan)
    )
    rows = pd.DataFrame({"group": list(ga.before.names), "images": ga.before.count,
                         "before": ga.before.accuracy, "after": ga.after.accuracy,
                         "random": rnd})  # fmt: skip
    rows = rows[rows["images"] > 0]
    order = list(rows["group"])
    long = rows.melt(id_vars="group", value_vars=["before", "after"], var_name="when",
                     value_name="accuracy")  # fmt: skip
    layers = [
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=alt.X("group:N", sort=order, title=None),
            xOffset=alt.XOffset("when:N", sort=["before", "after"]),
            y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("when:N", sort=["before", "after"], title=None),
            tooltip=["group", "when", alt.Tooltip("accuracy:Q", format=".3f")],
        )
    ]
    if rows["random"].notna().any():
        layers.append(
            alt.Chart(rows)
            .mark_point(color="black", shape="diamond", filled=True)
            .encode(x=alt.X("group:N", sort=order), y="random:Q",
                    tooltip=[alt.Tooltip("random:Q", format=".3f")])
        )  # fmt: skip
    st.altair_chart(alt.layer(*layers), width="stretch")
    st.caption("Accuracy of each group before and after; black: random heads' mean after.")
