"""Zero-shot classification tasks of a store's images, before their text embeddings.

Sources (`--tasks` of `ablate`):
- `factors`: the demo world, one task per factor (its values as classes, the world's prompts);
- `folders`: the image folders' class names (recorded per image at build time);
- `groups`: the demo world's planted-shortcut task: class = `world.BIAS.core` (shape), group =
  (core, spurious) values (shape, background), 16 groups;
- a FILE mapping folder names to class names (`n01440764,tench` per line, `,` or tab; a
  header line `folder,class` is allowed), e.g. ImageNet synset folders;
- a FILE of `path,class,group` lines (the Waterbirds layout: an image's path relative to the
  images root, its class name and its group name; a header `path,class,group` is allowed):
  one task with groups, for worst-group accuracy (`engine.core.groups`).
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
TASK_SOURCES = ("factors", "folders", "groups", "FILE")
GROUP_SEPARATOR = " / "  # a world group's name: "circle / black"


@dataclass
class TaskSpec:
    """A task before its text embeddings: names, per-class prompts, labels [image]."""

    name: str
    class_names: list[str]
    prompts: list[list[str]]
    labels: np.ndarray
    groups: np.ndarray | None = None  # [image] group index, -1 outside every group
    group_names: list[str] | None = None

    @property
    def grouped(self) -> bool:
        return self.groups is not None


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
    if source == "groups":
        if factors is None:
            raise UserError(
                "--tasks groups needs a demo-world store (a FILE path,class,group else)"
            )
        return source, [world_group_task(*factors)]
    if source not in ("factors", "folders") and _is_group_file(source):
        return source, [_group_file_task(source, r.images()["path"].tolist())]
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


# ------------------------------------------------------------------------------------ groups


def world_group_task(
    names: list[str], codes: np.ndarray, bias: world.Bias = world.BIAS
) -> TaskSpec:
    """The world's planted-shortcut task over codes int [image, factor] (columns `names`):
    classes = the values of `bias.core`, groups = (core value, spurious value), core-major."""
    missing = [f for f in (bias.core, bias.spurious) if f not in names]
    if missing:
        raise UserError(f"the store's world factors lack {', '.join(missing)}")
    core = codes[:, names.index(bias.core)].astype(np.int64)
    spur = codes[:, names.index(bias.spurious)].astype(np.int64)
    n_sp = len(world.FACTORS[bias.spurious])
    group_names = [
        f"{c}{GROUP_SEPARATOR}{s}"
        for c in world.FACTORS[bias.core]
        for s in world.FACTORS[bias.spurious]
    ]
    return TaskSpec(
        bias.core,
        list(world.FACTORS[bias.core]),
        world.value_texts(bias.core),
        core,
        groups=core * n_sp + spur,  # core-major: group c*n_sp + s
        group_names=group_names,
    )


def _rows(path: str) -> list[list[str]]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--tasks {path!r}: not factors, folders, groups, or a mapping file")
    text = p.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    if not lines:
        raise UserError(f"--tasks {path}: the file is empty")
    dialect = "excel-tab" if "\t" in lines[0] else "excel"
    return [
        [c.strip() for c in r] for r in csv.reader(lines, dialect=dialect) if r and r[0].strip()
    ]


def _is_group_file(path: str) -> bool:
    """A FILE with three columns (path,class,group) rather than two (folder,class)."""
    rows = _rows(path)
    return bool(rows) and len(rows[0]) >= 3


def _group_file_task(path: str, image_paths: list[str]) -> TaskSpec:
    """One task with groups from a `path,class,group` FILE, over the store's images (their
    paths relative to the images root, as the build recorded them)."""
    rows = _rows(path)
    if [c.lower() for c in rows[0][:3]] == ["path", "class", "group"]:
        rows = rows[1:]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) < 3 or not r[1] or not r[2]]
    if bad or not rows:
        raise UserError(
            f"--tasks {path}: every line must be PATH,CLASS,GROUP (bad lines: {bad[:5]})"
        )

    def key(p: str) -> str:
        return p.replace("\\", "/").removeprefix("./")

    table = {key(r[0]): (r[1], r[2]) for r in rows}
    hits = [table.get(key(p)) for p in image_paths]
    found = [h for h in hits if h is not None]
    if not found:
        raise UserError(
            f"--tasks {path}: no store image's path is listed (paths are relative to the images "
            f"root, e.g. {image_paths[0]!r})"
        )
    classes = sorted({c for c, _ in found})
    groups = sorted({g for _, g in found})
    if len(classes) < 2:
        raise UserError(f"--tasks {path}: fewer than two classes among the store's images")
    ci = {c: i for i, c in enumerate(classes)}
    gi = {g: i for i, g in enumerate(groups)}
    labels = np.array([ci[h[0]] if h else UNLABELLED for h in hits], np.int64)
    group_idx = np.array([gi[h[1]] if h else UNLABELLED for h in hits], np.int64)
    return TaskSpec(
        Path(path).stem,
        classes,
        class_prompts([c.replace("_", " ") for c in classes], TEMPLATES),
        labels,
        groups=group_idx,
        group_names=groups,
    )
