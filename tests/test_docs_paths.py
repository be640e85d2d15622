"""Every module path and dotted name the docs give exists (issue 20, item 7).

README.md, docs/*.md and dashboard/README.md name files (`engine/core/textspan.py`,
`benchmarks/bench_build.py`) and Python names (`engine.store.random_store`,
`engine.core.analysis.HeadContributions`). A reader who follows one must find it: a path must be
a file or folder of the checkout (or a module, `engine/errors` for `engine/errors.py`), a dotted
name must import (its longest importable module, then attributes).
"""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "dashboard" / "README.md", *(ROOT / "docs").glob("*.md")])
TOPS = r"(?:engine|dashboard|tests|scripts|benchmarks|docs)"
PATH = re.compile(rf"(?<![\w./~-]){TOPS}(?:/[\w.*-]+)+/?")
DOTTED = re.compile(r"(?<![\w./~-])(?:engine|dashboard)(?:\.[A-Za-z_]\w*)+")


def doc_paths(text: str) -> set[str]:
    out = set()
    for m in PATH.finditer(text):
        p = m.group(0).rstrip(".").rstrip("/")
        if "*" not in p:  # a glob names a pattern, not a file
            out.add(p)
    return out


def doc_names(text: str) -> set[str]:
    return {m.group(0).rstrip(".") for m in DOTTED.finditer(text)}


def path_exists(p: str) -> bool:
    f = ROOT / p
    return f.exists() or f.with_name(f.name + ".py").is_file()


def name_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.unit
def test_the_scanner_finds_and_checks_what_docs_write():
    text = (
        "see `engine/core/textspan.py` and engine/nope.py, `engine.store.random_store`, "
        "engine.core.analysis.HeadContributions, `engine.imageio.load_upload`, "
        "benchmarks/results/*.json and docs/benchmarks.md."
    )
    assert doc_paths(text) == {"engine/core/textspan.py", "engine/nope.py", "docs/benchmarks.md"}
    assert doc_names(text) == {
        "engine.store.random_store",
        "engine.core.analysis.HeadContributions",
        "engine.imageio.load_upload",
    }
    assert path_exists("engine/core/textspan.py") and path_exists("engine/errors")
    assert not path_exists("engine/nope.py")
    assert name_exists("engine.core.analysis.HeadContributions")
    assert not name_exists("engine.imageio.load_upload") and not name_exists("engine.nope")


@pytest.mark.unit
@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_and_dotted_name_in_the_docs_exists(doc):
    text = doc.read_text(encoding="utf-8")
    bad = sorted(p for p in doc_paths(text) if not path_exists(p))
    bad += sorted(n for n in doc_names(text) if not name_exists(n))
    assert not bad, f"{doc.relative_to(ROOT)} names what does not exist: {', '.join(bad)}"
