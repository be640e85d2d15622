"""Zero-shot classification tasks of a store's images, before their text embeddings.

Sources (`--tasks` of `ablate`):
- `factors`: the demo world, one task per factor (its values as classes, the world's prompts);
- `folders`: the image folders' class names (recorded per image at build time);
- a FILE mapping folder names to class names (`n01440764,tench` per line, `,` or tab; a
  header line `folder,class` is allowed), e.g. ImageNet synset folders.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.core.zeroshot import UNLABELLED, class_prompts
from engine.errors import UserError
from engine.sources import world

TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "{}")
TASK_SOURCES = ("factors", "folders", "FILE")


@dataclass
class TaskSpec:
    """A task before its text embeddings: names, per-class prompts, labels [image]."""

    name: str
    class_names: list[str]
    prompts: list[list[str]]
    labels: np.ndarray


# ------------------------------------------------------------------------------------ tasks


def task_specs(r, source: str | None = None) -> tuple[str, list[TaskSpec]]:
    """The tasks of a store (read through `r`, a StoreReader): (source used, tasks)."""
    factors = r.factors()
    source = source or ("factors" if factors is not None else "folders")
    if source == "factors":
        if factors is None:
            raise UserError("--tasks factors needs a demo-world store; use folders or a FILE")
        names, codes = factors
        return source, [
            TaskSpec(f, list(world.FACTORS[f]), world.value_texts(f), codes[:, k].astype(np.int64))
            for k, f in enumerate(names)
        ]
    classes = r.images()["class"].tolist()
    if source == "folders":
        mapping = {c: c.replace("_", " ") for c in classes if c}
    else:
        mapping = _read_mapping(source)
    present = sorted({mapping[c] for c in classes if c in mapping})
    if len(present) < 2:
        raise UserError(
            f"--tasks {source}: fewer than two classes among the store's images "
            "(use --tasks factors for the demo world, or a FILE mapping folders to class names)"
        )
    index = {name: i for i, name in enumerate(present)}
    labels = np.array([index[mapping[c]] if c in mapping else UNLABELLED for c in classes])
    name = "folders" if source == "folders" else Path(source).stem
    return source, [TaskSpec(name, present, class_prompts(present, TEMPLATES), labels)]


def _read_mapping(path: str) -> dict[str, str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--tasks {path!r}: not factors, folders, or a mapping file")
    text = p.read_text(encoding="utf-8", errors="replace")
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
    rows = [r for r in csv.reader(text.splitlines(), dialect=dialect) if r and r[0].strip()]
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["folder", "class"]:
        rows = rows[1:]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) < 2 or not r[1].strip()]
    if bad or not rows:
        raise UserError(f"--tasks {path}: every line must be FOLDER,CLASS (bad lines: {bad[:5]})")
    return {r[0].strip(): r[1].strip() for r in rows}
