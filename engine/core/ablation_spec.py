"""Ablation specs: the canonical component names and the spec language (math only, no I/O).

Canonical names: heads `L{l}H{h}`; per layer `L{l}.mlp`, `L{l}.attn` (a layer whose heads are not
stored: its whole attention term), `L{l}.attn_bias` (a stored layer's out_proj bias term);
`embed`; `ln_bias` (ln_post's constant bias). Canonical order: embed, then per layer the heads,
attn, attn_bias, mlp; ln_bias last.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from engine.core.labels import normalise_label
from engine.core.layers import head_name, term_name
from engine.errors import UserError

VALID_FORMS = (
    "valid forms: L10H3,L11H7 | label:NAME | layers:8-11 | mlp | mlp:8-11 | embed | "
    "all-but-last:K | all | none | L3.mlp, L3.attn, L9.attn_bias, ln_bias, pool_mlp (SigLIP); "
    "combine with +"
)
_HEAD = re.compile(r"L(\d+)H(\d+)", re.IGNORECASE)
_LAYER_TERM = re.compile(r"L(\d+)\.(mlp|attn_bias|attn)", re.IGNORECASE)
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def _bad(atom: str, why: str) -> UserError:
    return UserError(f"bad ablation spec {atom!r}: {why}; {VALID_FORMS}")


def _range(atom: str, text: str, lo: int, hi: int) -> range:
    m = _RANGE.fullmatch(text.strip())
    if not m:
        raise _bad(atom, "a layer range is A or A-B")
    a = int(m[1])
    b = int(m[2]) if m[2] is not None else a
    if a > b or a < lo or b > hi:
        raise _bad(atom, f"layers must lie in {lo}-{hi}, low to high")
    return range(a, b + 1)


def parse_ablation_spec(
    text: str,
    available_heads: Collection[tuple[int, int]],
    labels: Mapping[tuple[int, int], str],
    n_layers: int,
    stored_layers: Collection[int] | None = None,
    *,
    normalise: Callable[[str], str] | None = None,
) -> list[str]:
    """Component names (canonical order, no duplicates) for an ablation spec.

    Atoms, joined by `+` or `,`: a head `L10H3`; `label:NAME` (heads whose label matches after
    `normalise`, default `labels.normalise_label`: case and plurals folded); `layers:A-B` (every stored head of those layers);
    `mlp` or `mlp:A-B`; `embed`; `all-but-last:K` (everything but the heads of the last K layers:
    every MLP, the embedding, and the attention of the other layers — their heads and out_proj
    bias terms where heads are stored, else their whole attention term; the constant ln_bias and
    the last K layers' own out_proj bias terms stay); `all` (every term, ln_bias included);
    `none`; and the canonical names `L3.mlp`, `L3.attn`, `L9.attn_bias`, `ln_bias`.
    Unknown forms, heads or labels raise UserError with one line naming the valid forms.
    """
    heads = {(int(l), int(h)) for l, h in available_heads}
    stored = sorted({l for l, _ in heads} if stored_layers is None else set(stored_layers))
    norm = normalise or normalise_label
    last = n_layers - 1
    out: list[str] = []
    atoms = [a.strip() for a in re.split(r"[+,]", text or "")]
    if not any(atoms):
        raise _bad(text or "", "empty spec")
    for atom in atoms:
        low = atom.lower()
        if not atom:
            raise _bad(text, "empty item between separators")
        if low == "none":
            continue
        if low in ("embed", "ln_bias", "pool_mlp"):  # pool_mlp: attention-pooled stores only
            out.append(low)
        elif m := _HEAD.fullmatch(atom):
            key = (int(m[1]), int(m[2]))
            if key not in heads:
                raise _bad(atom, f"not a stored head (stored layers: {_fmt_layers(stored)})")
            out.append(head_name(*key))
        elif m := _LAYER_TERM.fullmatch(atom):
            l, kind = int(m[1]), m[2].lower()
            if l > last:
                raise _bad(atom, f"the model has layers 0-{last}")
            if kind == "attn" and l in stored:
                raise _bad(atom, f"layer {l}'s heads are stored: name them or use layers:{l}")
            if kind == "attn_bias" and l not in stored:
                raise _bad(atom, f"layer {l}'s bias is inside L{l}.attn (its heads are not stored)")
            out.append(term_name(l, kind))
        elif low.startswith("label:"):
            want = norm(atom[6:])
            hit = sorted(k for k, v in labels.items() if k in heads and norm(v) == want)
            if not hit:
                known = sorted({norm(v) for k, v in labels.items() if k in heads})
                shown = ", ".join(known[:8]) + (" …" if len(known) > 8 else "")
                raise _bad(atom, f"no stored head has this label (labels: {shown or 'none'})")
            out += [head_name(l, h) for l, h in hit]
        elif low.startswith("layers:"):
            if not stored:
                raise _bad(atom, "no heads are stored")
            r = _range(atom, atom[7:], 0, last)
            off = [l for l in r if l not in stored]
            if off:
                raise _bad(atom, f"heads of layer {off[0]} are not stored ({_fmt_layers(stored)})")
            out += [head_name(l, h) for l, h in sorted(heads) if l in r]
        elif low == "mlp" or low.startswith("mlp:"):
            r = range(n_layers) if low == "mlp" else _range(atom, atom[4:], 0, last)
            out += [term_name(l, "mlp") for l in r]
        elif low.startswith("all-but-last:"):
            try:
                k = int(atom[13:])
            except ValueError:
                raise _bad(atom, "K must be a whole number of layers") from None
            if not 1 <= k <= n_layers:
                raise _bad(atom, f"K must lie in 1-{n_layers}")
            out += ["embed"] + [term_name(l, "mlp") for l in range(n_layers)]
            for l in range(n_layers - k):
                if l in stored:
                    out += [head_name(l, h) for ll, h in sorted(heads) if ll == l]
                    out.append(term_name(l, "attn_bias"))
                else:
                    out.append(term_name(l, "attn"))
        elif low == "all":
            out += ["embed", "ln_bias"] + [term_name(l, "mlp") for l in range(n_layers)]
            out += [head_name(l, h) for l, h in sorted(heads)]
            out += [
                term_name(l, "attn_bias") if l in stored else term_name(l, "attn")
                for l in range(n_layers)
            ]
        else:
            raise _bad(atom, "unknown form")
    return sorted(dict.fromkeys(out), key=sort_key)


def format_ablation_spec(names: Iterable[str]) -> str:
    """A spec that parses back to `names` (canonical order): comma-joined names, or 'none'."""
    names = sorted(dict.fromkeys(names), key=sort_key)
    return ",".join(names) if names else "none"


def _fmt_layers(layers: Sequence[int]) -> str:
    if not layers:
        return "none"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
    return ",".join(map(str, layers))


def sort_key(name: str) -> tuple:
    """Canonical order: embed, then per layer heads, attn, attn_bias, mlp; ln_bias last."""
    if name == "embed":
        return (-1, 0, 0, name)
    if name == "ln_bias":
        return (math.inf, 0, 0, name)
    m = _HEAD.fullmatch(name)
    if m:
        return (int(m[1]), 0, int(m[2]), name)
    m = _LAYER_TERM.fullmatch(name)
    if m:
        return (int(m[1]), {"attn": 1, "attn_bias": 2, "mlp": 3}[m[2].lower()], 0, name)
    return (math.inf, 1, 0, name)
