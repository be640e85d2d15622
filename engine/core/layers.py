"""Names of layers and heads: the one layer grammar every command shares, and `L{l}H{h}`.

Layer grammar (`--layers` of `verify`, `build`, `interpret`, `ablate`):

    K        the last K layers of the model (a bare number always means *last K*)
    lastK    the same, spelled out
    all      every layer (every stored layer, where a store says which are available)
    8,9,10   absolute layer indices (a comma list; needs at least one comma)
    8-11     an inclusive range; ranges and indices mix: `2,8-11`

Indices are absolute (0 = the first block). Where only some layers are available (a store holds
the heads of a few layers), a selection outside them is refused, naming the available ones.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.errors import UserError

GRAMMAR = "K or lastK (the last K layers), all, a comma list 8,9,10, or a range 8-11"
_HEAD = re.compile(r"^L(\d+)H(\d+)$")


def head_name(layer: int, head: int) -> str:
    """The one spelling of a head: `L{layer}H{head}` (absolute layer index)."""
    return f"L{int(layer)}H{int(head)}"


_UNIT = re.compile(r"L(\d+)([HN])(\d+)", re.IGNORECASE)


def parse_unit_name(text) -> tuple[str, int, int] | None:
    """A unit's name, any case: `L7H3` -> ("head", 7, 3), `L6N12` -> ("neuron", 6, 12); anything
    else -> None (the one parser of both spellings: unit pages, unit tables, visualise)."""
    m = _UNIT.fullmatch(str(text or "").strip())
    if not m:
        return None
    return ("head" if m[2].upper() == "H" else "neuron"), int(m[1]), int(m[3])


def unit_name(kind: str, layer: int, index: int) -> str:
    """`L{l}H{h}` for a head, `L{l}N{n}` for a neuron."""
    return f"L{int(layer)}{'H' if kind == 'head' else 'N'}{int(index)}"


def term_name(layer: int, kind: str) -> str:
    """The one spelling of a per-layer term: `L{layer}.mlp`, `L{layer}.attn` (a layer's whole
    attention), `L{layer}.attn_bias` (its out_proj bias)."""
    return f"L{int(layer)}.{kind}"


def parse_head_name(name: str) -> tuple[int, int]:
    """`L10H3` -> (10, 3); a clear UserError otherwise."""
    m = _HEAD.match(str(name).strip())
    if not m:
        raise UserError(f"bad head name {name!r}: use L{{layer}}H{{head}}, e.g. L10H3")
    return int(m.group(1)), int(m.group(2))


def _bad(arg: object, why: str) -> UserError:
    return UserError(f"bad --layers {arg!r}: {why}; use {GRAMMAR}")


def parse_layers(
    arg: str | int | None, n_layers: int, available: Sequence[int] | None = None
) -> list[int]:
    """Parse the layer grammar into sorted absolute indices in [0, n_layers).

    `None`, "" and "all" mean every available layer (every layer when `available` is None).
    """
    pool = list(range(n_layers)) if available is None else sorted(int(x) for x in available)
    s = "" if arg is None else str(arg).strip().lower()
    if s in ("", "all"):
        return pool
    last = s[4:] if s.startswith("last") else s
    if last.isdigit():
        k = int(last)
        if not 1 <= k <= n_layers:
            raise _bad(arg, f"the model has {n_layers} layers, so K must be in 1..{n_layers}")
        return _check(list(range(n_layers - k, n_layers)), arg, pool, available)
    out: set[int] = set()
    for part in s.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise _bad(arg, f"range {part} is empty")
            out.update(range(lo, hi + 1))
        elif part.isdigit():
            out.add(int(part))
        else:
            raise _bad(arg, f"cannot read {part!r}")
    if not out:
        raise _bad(arg, "no layer named")
    bad = sorted(i for i in out if i >= n_layers)
    if bad:
        raise _bad(arg, f"layers {bad} do not exist (the model has layers 0..{n_layers - 1})")
    return _check(sorted(out), arg, pool, available)


def _check(layers: list[int], arg, pool: list[int], available) -> list[int]:
    if available is not None:
        missing = [i for i in layers if i not in pool]
        if missing:
            raise UserError(f"--layers {arg!r}: layers {missing} are not stored (stored: {pool})")
    return layers


def format_layers(layers: Sequence[int], n_layers: int) -> str:
    """The shortest grammar string that parses back to `layers` (for records and messages)."""
    layers = sorted(int(x) for x in layers)
    if layers == list(range(n_layers)):
        return "all"
    if layers and layers == list(range(n_layers - len(layers), n_layers)):
        return f"last{len(layers)}"
    runs: list[str] = []
    i = 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        runs.append(f"{layers[i]}-{layers[j]}" if j > i else str(layers[i]))
        i = j + 1
    text = ",".join(runs)
    return text if ("," in text or "-" in text) else f"{text}-{text}"
