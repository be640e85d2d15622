"""Every module path and dotted name the docs give exists (issue 20, item 7).

README.md, docs/*.md and dashboard/README.md name files (`engine/core/textspan.py`,
`benchmarks/bench_build.py`) and Python names (`engine.store.random_store`,
`engine.core.analysis.HeadContributions`). A reader who follows one must find it: a path must be
a file or folder of the checkout (or a module, `engine/errors` for `engine/errors.py`), a dotted
name must import (its longest importable module, then attributes).
"""

import fnmatch
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


ARCHITECTURE = ROOT / "docs" / "architecture.md"
MAP_HEADING = "## Modules, one job each"


def module_map(text: str) -> set[str]:
    """The module map's entries: the backticked paths (`core/x.py`, `cli/*.py`, relative to
    engine/) in the first column of the table under MAP_HEADING."""
    section = text.split(MAP_HEADING, 1)[1].split("\n## ", 1)[0]
    out = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            out |= set(re.findall(r"`([\w/.*-]+\.py)`", line.split("|")[1]))
    return out


def engine_modules() -> list[str]:
    """Every module of engine/ (packages' `__init__.py` aside), as the map writes them."""
    engine = ROOT / "engine"
    return sorted(
        p.relative_to(engine).as_posix() for p in engine.rglob("*.py") if p.name != "__init__.py"
    )


@pytest.mark.unit
def test_the_module_map_reader():
    text = (
        f"x\n{MAP_HEADING}\n\n| module | job |\n|---|---|\n"
        "| `core/a.py`, `core/b.py` | math, see `core/c.py` |\n| `cli/*.py` | commands |\n"
        "\n## Next\n| `core/d.py` | elsewhere |\n"
    )
    assert module_map(text) == {"core/a.py", "core/b.py", "cli/*.py"}


@pytest.mark.unit
def test_every_engine_module_is_in_the_architecture_map_and_every_entry_exists():
    entries = module_map(ARCHITECTURE.read_text(encoding="utf-8"))
    assert entries
    engine = ROOT / "engine"
    absent = sorted(e for e in entries if not list(engine.glob(e)))
    assert not absent, f"docs/architecture.md maps modules that do not exist: {absent}"
    unmapped = [m for m in engine_modules() if not any(fnmatch.fnmatch(m, e) for e in entries)]
    assert not unmapped, f"engine modules missing from docs/architecture.md's map: {unmapped}"
