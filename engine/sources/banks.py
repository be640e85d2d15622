"""Description banks (package data and user files) and the LLM prompt's examples.

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
from pathlib import Path

from engine.core.labels import NON_LABELS  # categories that never become a head's label
from engine.errors import UserError

DATA = Path(__file__).resolve().parents[1] / "data"
BANKS = DATA / "banks"


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


def load_llm_examples() -> list[tuple[list[str], str]]:
    """The five hand-labelled example heads of the LLM prompt: (texts, label)."""
    data = json.loads((BANKS / "llm_examples.json").read_text(encoding="utf-8"))
    return [(list(e["texts"]), str(e["label"])) for e in data["examples"]]


def load_llm_neuron_examples() -> list[tuple[list[str], str]]:
    """The five hand-labelled example neurons of the neurons' LLM prompt: (texts, label), each
    text already written with its weight as the prompt shows it (`neuron_prompt_texts`)."""
    data = json.loads((BANKS / "llm_neuron_examples.json").read_text(encoding="utf-8"))
    return [
        (
            neuron_prompt_texts([t for t, _ in e["texts"]], [w for _, w in e["texts"]]),
            str(e["label"]),
        )
        for e in data["examples"]
    ]


def neuron_prompt_texts(texts, weights) -> list[str]:
    """A neuron's texts as its LLM prompt lists them: `text (weight +0.41)`, best first."""
    return [f"{t} (weight {float(w):+.2f})" for t, w in zip(texts, weights, strict=True)]
