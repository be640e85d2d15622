"""Ablation: zero-shot accuracy before and after mean-ablating components, with a random baseline.

The page gathers a spec (the language of `python -m engine ablate --ablate`) and the run's
choices, and calls the store session's `ablate` — the same function the command runs — or, for
MLP neurons (`L6N12`, `neurons:L6:significant`; a store built with `--neurons`), its
`ablate_neurons`. Everything runs from the store (the complete decomposition and the neurons'
second-order effects are stored); the model is loaded only for tasks whose class embeddings are
not cached in the store yet, or to embed a `top:K:TEXT` neuron query. Read-only: the command
records a run, the page does not.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from dashboard import groups_panel, routes, state, stores, unit_page, widgets
from engine.core.labels import MIXED, NON_LABELS
from engine.core.layers import head_name
from engine.core.neuron_spec import SIGNIFICANT_SHARE, VALID_NEURON_FORMS
from engine.errors import UserError
from engine.session.neurons import neuron_name

NEURON_MODE = "Neurons"
NEURON_KINDS = {  # what the page offers -> the spec's form (engine.core.neuron_spec)
    f"significant (the top {SIGNIFICANT_SHARE:.0%} by significance)": "significant",
    f"insignificant (the other {1 - SIGNIFICANT_SHARE:.0%})": "insignificant",
    "all": "all",
    "top K by significance": "top",
    "bottom K by significance": "bottom",
    "top K nearest a text": "text",
    "a list (L6N12, L6N40)": "list",
}
MAX_LINKS = 200  # neuron page links listed at most

st.title("Ablation")
st.caption(
    "Mean-ablation of direct effects (or of MLP neurons' second-order effects): each chosen "
    "component's contribution is replaced by its "
    "mean over one half of the stored images, and zero-shot accuracy is measured on the other "
    "half. Exact arithmetic on the stored decomposition; no image is run again."
)
ctx = state.page_context()
store = widgets.require_store(ctx)
key = stores.version_key(store)


@st.cache_data(show_spinner="Ablating…", max_entries=32)
def _run(key: str, spec: str, draws: int, split: float, seed: int) -> tuple[str, dict, str]:
    """(task source, result, baseline note) of `engine ablate`'s function, cached per store
    version."""
    run = stores.session(key).ablate(spec, random=draws, split=split, seed=seed)
    return run.tasks_source, run.result.to_dict(), run.baseline_note


@st.cache_data(show_spinner="Ablating neurons…", max_entries=32)
def _run_neurons(key: str, spec: str, draws: int, split: float, seed: int) -> tuple[str, dict, str]:
    """(task source, result, baseline note) of `engine ablate`'s neuron function, cached per
    store version."""
    run = stores.session(key).ablate_neurons(spec, random=draws, split=split, seed=seed)
    return run.tasks_source, run.to_dict(), run.baseline_note


def _neuron_spec() -> str:
    """The neuron spec the user chose (stops the page with the session's message when the store
    has no described neurons)."""
    try:
        table = store.neuron_table()
    except UserError as e:
        st.info(str(e))
        st.stop()
    built = sorted({int(x) for x in table.layer})
    c1, c2 = st.columns([1, 3])
    layer = c1.selectbox("Neuron layer", built, key="ablate_neuron_layer")
    rows = table[table.layer == layer]
    kind = NEURON_KINDS[c2.selectbox("Neurons", list(NEURON_KINDS), key="ablate_neuron_kind")]
    st.caption(
        "Mean-ablates their **second-order effects** (what they write, carried by the later heads "
        "to the embedding); the random baseline takes as many of the layer's other neurons. "
        "Significance: a neuron's mean centred effect norm (the Neurons page)."
    )
    if kind in ("significant", "insignificant", "all"):
        return f"neurons:L{layer}:{kind}"
    if kind == "list":
        first = rows.unit.iloc[0]  # the most significant
        text = st.text_input("Neurons", first, key="ablate_neuron_list",
                             help=f"comma-separated; {VALID_NEURON_FORMS}")  # fmt: skip
        return ",".join(x.strip() for x in text.split(",") if x.strip())
    k = int(st.number_input("K", 1, len(rows), min(50, len(rows)), key="ablate_neuron_k"))
    if kind == "text":
        text = st.text_input("Text", key="ablate_neuron_text", placeholder="e.g. a red shape")
        if "+" in text or "," in text:
            st.error("The text cannot hold '+' or ',' (they join a spec's parts).")
            st.stop()
        return f"neurons:L{layer}:top:{k}:{text.strip()}" if text.strip() else ""
    return f"neurons:L{layer}:{kind}:{k}"


def _neuron_links(units: list[str]) -> None:
    """Links to the unit pages of the ablated neurons: one link for one, else a list."""
    if len(units) == 1:
        routes.page_link(ctx, "head", f"{units[0]}'s page", unit=units[0])
        return
    links = [f"[{u}]({routes.href('head', routes.link_params(ctx, unit=u))})"
             for u in units[:MAX_LINKS]]  # fmt: skip
    more = f" … and {len(units) - MAX_LINKS} more" if len(units) > MAX_LINKS else ""
    with st.expander(f"Pages of the {len(units)} ablated neurons"):
        st.markdown(" · ".join(links) + more)


try:  # the store's zero-shot tasks (a clear message when it has none)
    with st.spinner("Reading the tasks…"):
        store.zeroshot_tasks()
except UserError as e:
    st.error(str(e))
    st.stop()

labels = store.head_labels()
layers = store.layers
# the default is a real property: never `mixed` (every unlabelled head) nor a non-label
properties = sorted(set(labels.values()) - {MIXED, *NON_LABELS})
mode = st.radio(
    "Ablate",
    ["Heads by label", "Heads", "Layers' heads", "All but the last K layers' heads", NEURON_MODE],
    index=0 if properties or not labels else 1,
    horizontal=True,
)
if mode == "Heads by label":
    options = sorted(set(labels.values()))
    if not options:
        st.info("No head is labelled yet: run `python -m engine interpret` on this store.")
        st.stop()
    chosen = st.multiselect("Labels", options, default=properties[:1])
    spec = "+".join(f"label:{c}" for c in chosen)
elif mode == "Heads":
    heads = store.heads()
    chosen = st.multiselect(
        "Heads",
        heads,
        default=heads[:1],
        format_func=lambda x: head_name(*x) + (f" · {labels[x]}" if x in labels else ""),
    )
    spec = ",".join(head_name(*h) for h in chosen)
elif mode == NEURON_MODE:
    spec = _neuron_spec()
elif mode == "Layers' heads":
    lo, hi = st.select_slider("Layers", options=layers, value=(layers[0], layers[-1]))
    spec = f"layers:{lo}-{hi}"
else:
    k = st.slider("K", 1, len(layers), len(layers))
    spec = f"all-but-last:{k}"
    st.caption(
        f"Ablates every term except the heads of the last {k} layers: all MLPs, the embedding, "
        "the other layers' attention. What is left is those heads' direct effects."
    )
late = min(4, len(layers))
neurons = mode == NEURON_MODE
if (
    mode not in ("All but the last K layers' heads", NEURON_MODE)
    and spec
    and st.checkbox(
        f"Only among the last {late} layers' heads (everything else mean-ablated first)",
        help="A redundant model keeps its accuracy when a few heads go: other heads, the MLPs and "
        "the early layers carry the same property. With only the late heads' direct effects left, "
        "compare 'after' with the random heads' 'after' (both have everything else ablated).",
    )
):
    spec = f"all-but-last:{late}+{spec}"
c1, c2, c3 = st.columns(3)
unit = "neurons" if neurons else "heads"
draws = c1.slider("Random baselines", 0, 20, 10, help=f"draws of as many random {unit} per layer")
split = c2.slider("Share of images for the means", 0.1, 0.9, 0.5, 0.05)
seed = int(c3.number_input("Seed", 0, 10_000, 0))
if not neurons:
    spec = groups_panel.finder(store, key, split, seed) or spec  # a repair of spurious heads
if not spec:
    st.info("Choose what to ablate.")
    st.stop()
st.caption(f"Spec: `{spec}` — the same run from the command line: "
           f"`python -m engine ablate --store {ctx.store_path} --ablate '{spec}'`")  # fmt: skip

try:
    source, result, note = (_run_neurons if neurons else _run)(key, spec, draws, split, seed)
except UserError as e:
    st.error(str(e))
    st.stop()
if note:
    st.warning(note)

rows = pd.DataFrame(
    [
        {"task": t["task"], "images": t["n_eval"], "before": t["before"], "after": t["after"],
         "drop": t["drop"], "random mean": t["random_mean"], "random sd": t["random_sd"],
         "random best": t["random_best"]}
        for t in result["tasks"]
    ]
)  # fmt: skip
if neurons:
    units = [neuron_name(l, n) for l, ns in result["neurons"].items() for n in ns]
    st.markdown(
        f"**{result['n_ablated']} neurons** ablated (their second-order effects); means over "
        f"{result['n_fit']:,} images, accuracy on {result['n_eval']:,} others ({source} tasks)."
    )
    _neuron_links(units)  # the ablated neurons' own pages
else:
    st.markdown(
        f"**{len(result['ablated'])} components** ablated; means over {result['n_fit']:,} "
        f"images, accuracy on {result['n_eval']:,} others ({source} tasks)."
    )
    unit_page.heads_links(  # the ablated heads' own pages (MLPs and other terms have none)
        ctx, [(u.layer, u.index) for u in map(unit_page.parse_unit, result["ablated"])
              if u is not None and u.kind == "head"], "ablated",
    )  # fmt: skip
st.dataframe(rows, hide_index=True, width="stretch", column_config={
    c: st.column_config.NumberColumn(format="%.3f") for c in rows.columns[2:]
})  # fmt: skip

long = rows.melt(
    id_vars="task", value_vars=["before", "after"], var_name="when", value_name="accuracy"
)
bars = (
    alt.Chart(long)
    .mark_bar()
    .encode(
        x=alt.X("task:N", title=None),
        xOffset=alt.XOffset("when:N", sort=["before", "after"]),
        y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("when:N", sort=["before", "after"], title=None),
        tooltip=["task", "when", alt.Tooltip("accuracy:Q", format=".3f")],
    )
)
layers_ = [bars]
if draws:
    band = rows.assign(
        lo=rows["random mean"] - rows["random sd"], hi=rows["random mean"] + rows["random sd"]
    )
    layers_.append(
        alt.Chart(band)
        .mark_errorbar(ticks=True, color="black")
        .encode(x="task:N", y=alt.Y("lo:Q", title="accuracy"), y2="hi:Q")
    )
    layers_.append(
        alt.Chart(band)
        .mark_point(color="black", shape="diamond", filled=True)
        .encode(x="task:N", y="random mean:Q", tooltip=[alt.Tooltip("random mean:Q", format=".3f")])
    )
st.altair_chart(alt.layer(*layers_), width="stretch")
st.caption(f"Bars: accuracy before and after; black: random {unit}' accuracy after (mean ± sd).")

worst = max(result["tasks"], key=lambda t: t["drop"])
st.subheader(f"Per class: {worst['task']} (the most affected task)")
per = pd.DataFrame(worst["per_class"])
per["drop"] = per["before"] - per["after"]
st.dataframe(
    per.sort_values("drop", ascending=False), hide_index=True, width="stretch",
    column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("before", "after", "drop")},
)  # fmt: skip
if not np.isfinite(per["drop"]).all():
    st.caption("Classes without evaluated images are blank.")

if neurons:
    st.caption(
        "The command above also records the run in the store (`neuron_ablation_runs`); this page "
        "does not. The Neurons page shows each neuron's recorded drops. Group accuracies are "
        "computed for ablations of heads."
    )
else:
    groups_panel.render(store, key, result["ablated"], draws, split, seed)  # grouped tasks only
