"""Can the random-head baseline of an ablation differ from the ablation itself?

`ablation.random_baseline` replaces each ablated head by a random head of the same layer, drawn
among that layer's other heads, or among all of its heads when it has too few others. So when an
ablation takes every head of its layers (`layers:10-11`) each draw is the ablated set itself: the
baseline's spread is 0 by construction and says nothing. When a layer keeps fewer other heads than
it loses, the draws reuse ablated heads and the baseline is biased towards the ablation.
`engine.session.ablation.ablate` runs `check_baseline` (its result's `baseline`); the CLI, its JSON
and the Ablation page show that note. Neurons' random baseline draws the same way within a neuron
layer: `check_neuron_baseline` (run by `engine.session.neuron_ablation.ablate_neurons`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.core.components import ComponentSet


@dataclass(frozen=True)
class BaselineCheck:
    status: str  # "ok" | "overlapping" (draws reuse ablated heads) | "identical" | "none"
    identical_layers: tuple[int, ...]  # layers whose every head is ablated
    overlapping_layers: tuple[int, ...]  # layers with fewer other heads than ablated ones
    note: str  # one sentence for the user ("" when ok)

    @property
    def meaningful(self) -> bool:
        """The baseline can differ from the ablated set."""
        return self.status in ("ok", "overlapping")

    def to_dict(self) -> dict:
        return {"status": self.status, "meaningful": self.meaningful,
                "identical_layers": list(self.identical_layers),
                "overlapping_layers": list(self.overlapping_layers), "note": self.note}  # fmt: skip


def check_baseline(components: ComponentSet, ablated: Sequence[str]) -> BaselineCheck:
    """Whether random heads of the same layers can stand in for the heads in `ablated`."""
    ablated = set(ablated)
    per_layer: dict[int, int] = {}
    for n in ablated:
        c = components[n]
        if c.kind == "head":
            per_layer[c.layer] = per_layer.get(c.layer, 0) + 1
    if not per_layer:
        return BaselineCheck(
            "none", (), (), "no heads are ablated: there is no random-head baseline"
        )
    n_layer = {lay: sum(c.layer == lay for c in components.heads) for lay in per_layer}
    identical = tuple(sorted(lay for lay, k in per_layer.items() if k >= n_layer[lay]))
    overlap = tuple(
        sorted(lay for lay, k in per_layer.items() if n_layer[lay] - k < k and lay not in identical)
    )

    def names(layers: tuple[int, ...]) -> str:
        if len(layers) > 2 and list(layers) == list(range(layers[0], layers[-1] + 1)):
            return f"layers {layers[0]}-{layers[-1]}"
        return f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"

    if len(identical) == len(per_layer):
        return BaselineCheck(
            "identical", identical, overlap,
            f"the random baseline cannot differ from the ablated set: every head of "
            f"{names(identical)} is ablated, so each draw is the ablated heads themselves "
            "(compare with 'before', or ablate fewer heads per layer)",
        )  # fmt: skip
    notes = []
    if identical:
        notes.append(f"every head of {names(identical)} is ablated (their draws are those heads)")
    if overlap:
        notes.append(f"{names(overlap)} keep fewer other heads than are ablated (draws reuse them)")
    status = "overlapping" if notes else "ok"
    note = ("the random baseline overlaps the ablated set: " + "; ".join(notes)) if notes else ""
    return BaselineCheck(status, identical, overlap, note)


def check_neuron_baseline(
    chosen: Mapping[int, Sequence[int]], n_neurons: Mapping[int, int]
) -> BaselineCheck:
    """Whether random neurons of the same layers can stand in for the neurons `chosen`
    ({layer: ablated indices}; `n_neurons`: {layer: its neurons}). The draws
    (`neuron_spec.random_neurons`) take the layer's other neurons when it has as many, else any
    of its neurons: every neuron of a layer ablated (`neurons:L6:all`) makes each draw the ablated
    set itself; more than half ablated (`neurons:L6:insignificant`) makes draws reuse them."""
    per_layer = {int(l): len(set(map(int, v))) for l, v in chosen.items() if len(v)}
    if not per_layer:
        return BaselineCheck(
            "none", (), (), "no neurons are ablated: there is no random-neuron baseline"
        )
    identical = tuple(sorted(l for l, k in per_layer.items() if k >= n_neurons[l]))
    overlap = tuple(
        sorted(l for l, k in per_layer.items() if n_neurons[l] - k < k and l not in identical)
    )

    def names(layers: tuple[int, ...]) -> str:
        return f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"

    if len(identical) == len(per_layer):
        return BaselineCheck(
            "identical", identical, overlap,
            f"the random baseline cannot differ from the ablated set: every neuron of "
            f"{names(identical)} is ablated, so each draw is the ablated neurons themselves "
            "(compare with 'before', or ablate fewer neurons per layer)",
        )  # fmt: skip
    notes = []
    if identical:
        notes.append(f"every neuron of {names(identical)} is ablated (their draws are those "
                     "neurons)")  # fmt: skip
    if overlap:
        shares = ", ".join(f"L{l}: {per_layer[l]} of {n_neurons[l]}" for l in overlap)
        notes.append(f"more than half of the neurons of {names(overlap)} are ablated ({shares}), "
                     "so each draw reuses most of them")  # fmt: skip
    status = "overlapping" if notes else "ok"
    note = ("the random baseline overlaps the ablated set: " + "; ".join(notes)) if notes else ""
    return BaselineCheck(status, identical, overlap, note)
