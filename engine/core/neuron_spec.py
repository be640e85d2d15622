"""Neuron ablation specs (math only, no I/O): which MLP neurons a spec names.

Atoms, joined by `+` or `,`: a neuron `L6N12`; `neurons:L6:all`; `neurons:L6:significant` (the
SIGNIFICANT_SHARE most significant neurons of the layer, by mean centred second-order effect
norm); `neurons:L6:insignificant` (the rest); `neurons:L6:top:50` / `neurons:L6:bottom:50` (by
significance); `neurons:L6:top:50:TEXT` (the 50 whose principal direction is nearest TEXT).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import numpy as np

from engine.errors import UserError

SIGNIFICANT_SHARE = 0.1  # `significant`: this share of a layer's neurons, most significant first
VALID_NEURON_FORMS = (
    "valid neuron forms: L6N12,L6N40 | neurons:L6:all | neurons:L6:significant | "
    "neurons:L6:insignificant | neurons:L6:top:50 | neurons:L6:bottom:50 | neurons:L6:top:50:TEXT"
)
_NEURON = re.compile(r"L(\d+)N(\d+)", re.IGNORECASE)
_GROUP = re.compile(r"neurons:L?(\d+):(.+)", re.IGNORECASE | re.DOTALL)


def _is_neuron_atom(atom: str) -> bool:
    return bool(_NEURON.fullmatch(atom) or atom.lower().startswith("neurons:"))


def is_neuron_spec(text: str) -> bool:
    """Whether an ablation spec names neurons. A spec naming both neurons and other components
    (`L6N12+L10H3`) raises one UserError: a neuron's second-order effect flows through the later
    heads, so removing both would take that path out twice; they are ablated in separate runs."""
    atoms = [a.strip() for a in re.split(r"[+,]", (text or "").strip()) if a.strip()]
    kinds = [_is_neuron_atom(a) for a in atoms]
    if any(kinds) and not all(kinds):
        neuron = next(a for a, k in zip(atoms, kinds, strict=True) if k)
        other = next(a for a, k in zip(atoms, kinds, strict=True) if not k)
        raise UserError(
            f"the spec {text!r} mixes neurons ({neuron}) with other components ({other}): "
            "ablate them in separate runs (a neuron's second-order effect flows through the later "
            "heads, so removing both would remove that path twice)"
        )
    return bool(kinds) and kinds[0]


def spec_layers(text: str) -> list[int]:
    """The layers whose neurons a neuron spec names (sorted; forms that do not parse are left to
    `parse_neuron_spec`'s error)."""
    out = set()
    for atom in (a.strip() for a in re.split(r"[+,]", text or "")):
        m = _NEURON.fullmatch(atom) or _GROUP.fullmatch(atom)
        if m:
            out.add(int(m[1]))
    return sorted(out)


def random_neurons(rng: np.random.Generator, n_neurons: int, chosen: np.ndarray) -> np.ndarray:
    """A random stand-in for the neurons `chosen` of one layer: as many neurons, drawn among the
    layer's other neurons when it has at least as many others, else among all of its neurons
    (as heads' random baseline draws, `engine.core.ablation`) -> sorted indices."""
    chosen = np.asarray(chosen, np.int64)
    others = np.setdiff1d(np.arange(n_neurons), chosen)
    pool = others if len(others) >= len(chosen) else np.arange(n_neurons)
    return np.sort(rng.choice(pool, len(chosen), replace=False))


def _bad(atom: str, why: str) -> UserError:
    return UserError(f"bad neuron spec {atom!r}: {why}; {VALID_NEURON_FORMS}")


def parse_neuron_spec(
    text: str,
    significance: Mapping[int, np.ndarray],
    text_scores: Callable[[int, str], np.ndarray] | None = None,
) -> dict[int, np.ndarray]:
    """{layer: sorted neuron indices} named by `text`.

    significance: {built layer: [neuron] significance}; text_scores(layer, text) -> [neuron]
    alignment with a text (needed for `top:K:TEXT`). Unknown forms, layers or neurons raise one
    UserError naming the valid forms."""
    chosen: dict[int, set[int]] = {}
    atoms = [a.strip() for a in re.split(r"[+,]", text or "") if a.strip()]
    if not atoms:
        raise _bad(text or "", "empty spec")

    def layer_of(atom: str, layer: int) -> np.ndarray:
        if layer not in significance:
            raise _bad(atom, f"layer {layer}'s neurons are not described (built: "
                       f"{sorted(significance)})")  # fmt: skip
        return np.asarray(significance[layer], np.float64)

    for atom in atoms:
        if m := _NEURON.fullmatch(atom):
            layer, n = int(m[1]), int(m[2])
            sig = layer_of(atom, layer)
            if not 0 <= n < len(sig):
                raise _bad(atom, f"layer {layer} has neurons 0-{len(sig) - 1}")
            chosen.setdefault(layer, set()).add(n)
            continue
        m = _GROUP.fullmatch(atom)
        if not m:
            raise _bad(atom, "unknown form")
        layer, rest = int(m[1]), m[2]
        sig = layer_of(atom, layer)
        order = np.argsort(-sig, kind="stable")  # most significant first
        n_sig = max(1, int(round(SIGNIFICANT_SHARE * len(sig))))
        parts = rest.split(":", 2)
        kind = parts[0].strip().lower()
        if kind == "all" and len(parts) == 1:
            pick = order
        elif kind == "significant" and len(parts) == 1:
            pick = order[:n_sig]
        elif kind == "insignificant" and len(parts) == 1:
            pick = order[n_sig:]
        elif kind in ("top", "bottom") and len(parts) >= 2:
            try:
                k = int(parts[1])
            except ValueError:
                raise _bad(atom, "K must be a whole number of neurons") from None
            if not 1 <= k <= len(sig):
                raise _bad(atom, f"K must lie in 1-{len(sig)}")
            if len(parts) == 3:
                if kind != "top" or not parts[2].strip() or text_scores is None:
                    raise _bad(atom, "a text ranks neurons as top:K:TEXT")
                scores = np.asarray(text_scores(layer, parts[2].strip()), np.float64)
                pick = np.argsort(-scores, kind="stable")[:k]
            else:
                pick = order[:k] if kind == "top" else order[::-1][:k]
        else:
            raise _bad(atom, "unknown form")
        chosen.setdefault(layer, set()).update(int(i) for i in pick)
    return {l: np.array(sorted(v), dtype=np.int64) for l, v in sorted(chosen.items())}
