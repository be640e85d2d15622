"""The tool's one cache root on this machine, shared by every store and virtualenv.

`$CLIP_INTERPRET_CACHE` if set, else `$XDG_CACHE_HOME/clip-interpret` (default
`~/.cache/clip-interpret`), with one subfolder per kind of entry:

- `text-embeddings/`: text-bank embeddings (`engine.model.text_cache`),
- `architectures/`: which open_clip architectures are decomposable (`engine.model.discovery`).

Deleting any of it costs only the next run its recomputation. Entries are keyed by everything
that changes them (library versions included), since one root serves several virtualenvs.
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CACHE_ENV = "CLIP_INTERPRET_CACHE"
TEXT_EMBEDDINGS = "text-embeddings"
ARCHITECTURES = "architectures"


def cache_root() -> Path:
    """The cache root (see the module docstring); not created here."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clip-interpret"


def cache_dir(kind: str) -> Path:
    """The subfolder of one kind of entry (`TEXT_EMBEDDINGS`, `ARCHITECTURES`)."""
    if kind not in (TEXT_EMBEDDINGS, ARCHITECTURES):
        raise ValueError(f"unknown cache kind {kind!r} ({TEXT_EMBEDDINGS}, {ARCHITECTURES})")
    return cache_root() / kind


def package_versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of `packages` (None when absent), read without importing them."""
    out: dict[str, str | None] = {}
    for p in packages:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out
