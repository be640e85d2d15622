"""Description banks and the paper's reference head labels (package data and user files).

A bank is a list of short descriptions, each tagged with one property category. Built in:
`general` (engine/data/banks/general.csv, made by scripts/make_general_bank.py) and `world` (the
demo world's caption grammar, from `engine.sources.world.description_bank()`). A user bank is a plain text
file (one description per line, category "unknown") or a CSV with a `text` column and an optional
`category` column.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pandas as pd

from engine.errors import UserError

DATA = Path(__file__).resolve().parents[1] / "data"
BANKS = DATA / "banks"
REFERENCE = DATA / "reference"
NON_LABELS = ("unknown", "distractor")  # categories that never become a head's label


@dataclass(frozen=True)
class Bank:
    texts: list[str]
    categories: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def vocabulary(self) -> list[str]:
        """The categories that can be labels, sorted."""
        return sorted({c for c in self.categories if c not in NON_LABELS})


def _from_rows(rows: list[tuple[str, str]], name: str) -> Bank:
    rows = [(t.strip(), (c or "unknown").strip().lower() or "unknown") for t, c in rows]
    rows = [(t, c) for t, c in rows if t]
    if not rows:
        raise UserError(f"description bank {name!r} has no descriptions")
    return Bank([t for t, _ in rows], [c for _, c in rows], name)


def _read_csv(text: str, name: str) -> Bank:
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip().lower() for f in (reader.fieldnames or [])]
    if "text" not in fields:
        raise UserError(f"bank CSV {name!r} needs a 'text' column (found: {', '.join(fields)})")
    reader.fieldnames = fields
    return _from_rows([(r.get("text") or "", r.get("category") or "") for r in reader], name)


def _world_bank() -> Bank:
    try:
        from engine.sources.world import description_bank
    except ImportError as e:  # pragma: no cover - the world module ships with the package
        raise UserError(f"the demo world's bank is not available: {e}") from e
    return _from_rows([(t, c) for t, c in description_bank()], "world")


def load_bank(spec: str | Path) -> Bank:
    """`general`, `world`, or a path to a .txt (one per line) or .csv (`text,category`) file."""
    s = str(spec)
    if s == "general":
        return _read_csv((BANKS / "general.csv").read_text(encoding="utf-8"), "general")
    if s == "world":
        return _world_bank()
    path = Path(s)
    if not path.is_file():
        raise UserError(f"description bank {s!r}: not 'general', 'world' or an existing file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError) as e:
        raise UserError(f"cannot read description bank {s!r}: {e}") from e
    first = text.split("\n", 1)[0].strip().lower()
    if path.suffix.lower() == ".csv" or first in ("text", "text,category", "category,text"):
        return _read_csv(text, path.name)
    return _from_rows([(line, "unknown") for line in text.splitlines()], path.name)


# ---- reference labels published with the paper's demo ------------------------------------------


@cache
def _reference_table(name: str) -> pd.DataFrame:
    return pd.read_csv(REFERENCE / name)


def reference_models() -> list[tuple[str, str]]:
    """(arch, pretrained) of the six models with published head labels."""
    df = _reference_table("clip_interpret_head_labels.csv")
    pairs = df[["model", "pretrained"]].drop_duplicates()
    return [(str(a), str(p)) for a, p in pairs.itertuples(index=False)]


def reference_labels(arch: str, pretrained: str) -> pd.DataFrame | None:
    """Published labels as DataFrame(layer, head, label) for one model, or None if not published."""
    df = _reference_table("clip_interpret_head_labels.csv")
    sel = df[(df["model"] == arch) & (df["pretrained"] == pretrained)]
    if sel.empty:
        return None
    return sel[["layer", "head", "label"]].sort_values(["layer", "head"]).reset_index(drop=True)


def reference_property_heads(arch: str, pretrained: str) -> pd.DataFrame | None:
    """The demo's property -> heads lists as DataFrame(property, layer, head), or None."""
    df = _reference_table("clip_interpret_property_heads.csv")
    sel = df[(df["model"] == arch) & (df["pretrained"] == pretrained)]
    if sel.empty:
        return None
    return sel[["property", "layer", "head"]].reset_index(drop=True)


def load_llm_examples() -> list[tuple[list[str], str]]:
    """The five hand-labelled example heads of the LLM prompt: (texts, label)."""
    data = json.loads((BANKS / "llm_examples.json").read_text(encoding="utf-8"))
    return [(list(e["texts"]), str(e["label"])) for e in data["examples"]]
