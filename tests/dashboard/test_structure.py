"""The dashboard's structure, read from its source: a package imported normally, one owner of the
session state and the URL, no page rebinding a module's name, every page routed, no `pages/`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.dashboard.conftest import ROOT

pytestmark = pytest.mark.unit

DASH = ROOT / "dashboard"
SOURCES = sorted(p for p in DASH.rglob("*.py") if "__pycache__" not in p.parts)
MODULES = {p.stem for p in DASH.glob("*.py")} - {"Home", "__init__"}


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_only_the_state_module_touches_session_state_and_the_url():
    pattern = re.compile(r"\b(session_state|query_params)\b")
    touching = {
        _rel(p)
        for p in SOURCES
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Attribute) and pattern.fullmatch(node.attr)
    }
    assert touching == {"dashboard/state.py"}


def test_modules_are_imported_as_the_dashboard_package():
    """No bare `import stores` (a sys.path side effect); no sys.path edits but the entrypoint's
    one bootstrap."""
    bare, path_edits = [], []
    for p in SOURCES:
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bare += [f"{_rel(p)}: import {a.name}" for a in node.names if a.name in MODULES]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in MODULES:
                bare.append(f"{_rel(p)}: from {node.module} import …")
            elif isinstance(node, ast.ImportFrom) and node.level > 0:
                bare.append(f"{_rel(p)}: relative import")
        if "sys.path" in p.read_text():
            path_edits.append(_rel(p))
    assert bare == []
    assert path_edits == ["dashboard/Home.py"]


def test_no_page_rebinds_an_imported_name():
    """A page that assigns `query = …` after `import query` hides the module (issue 14)."""
    clashes = []
    pages = [p for d in ("views", "pages") for p in sorted((DASH / d).glob("*.py"))]
    assert len([p for p in pages if p.stem != "__init__"]) >= 8
    for p in pages:
        tree = ast.parse(p.read_text())
        imported = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For)):
                targets = [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and n.id in imported:
                        clashes.append(f"{_rel(p)}:{node.lineno} rebinds {n.id}")
    assert clashes == []


def test_every_page_is_routed_in_the_order_a_user_works():
    from dashboard import routes

    assert not (DASH / "pages").exists(), (
        "dashboard/pages/ makes a cold Streamlit server run a page file without Home.py (no "
        "sidebar, no store): put pages in dashboard/views/ and register them in routes.ROUTES"
    )
    titles = [r.title for r in routes.ROUTES]
    assert titles[:2] == ["Overview", "Heads"] and titles[-1] == "Ablation"
    assert titles[2:7] == [
        "Property neighbours",
        "Topic segmentation",
        "Contrastive segmentation",
        "Head image neighbours",
        "Head text neighbours",
    ]
    scripts = {p.stem for p in (DASH / "views").glob("*.py")} - {"__init__"}
    assert {r.url_path for r in routes.ROUTES} == scripts  # every script routed, and only those
    for r in routes.ROUTES:
        assert r.script.is_file() and re.fullmatch(r"[a-z_]+", r.url_path)
        assert r.icon.startswith(":material/") and r.title[0].isupper()


def test_links_keep_the_store_and_name_valid_pages():
    from dashboard import routes, state

    ctx = state.PageContext(store_param="demo")
    assert routes.link_params(ctx, unit="L7H3") == {"store": "demo", "unit": "L7H3"}
    assert routes.link_params(state.PageContext()) == {}
    assert routes.href("heads", {"store": "demo"}) == "./heads?store=demo"
    with pytest.raises(KeyError, match="overview"):
        routes.href("nope", {})


def test_store_names_in_the_url():
    from dashboard import state

    listed = ["/a/artifacts/demo", "/a/artifacts/vitb32"]
    assert state.store_param("/a/artifacts/vitb32", listed) == "vitb32"
    assert state.store_param("/elsewhere/s", listed) == "/elsewhere/s"  # not listed: its path
    assert state.match_store("vitb32", listed) == "/a/artifacts/vitb32"
    assert state.match_store("gone", listed) is None


def test_no_import_cycles_between_dashboard_modules():
    """Module-level or hidden in a function, no dashboard module imports one that imports it
    back (issue 14: query <-> uploads)."""
    graph: dict[str, set[str]] = {}
    for p in SOURCES:
        if p.parent != DASH or p.stem in ("Home", "__init__"):
            continue
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for n in names:
                last = n.removeprefix("dashboard.").split(".")[0]
                if (n.startswith("dashboard.") or n in MODULES) and last in MODULES:
                    deps.add(last)
        graph[p.stem] = deps - {p.stem}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for m in sorted(graph) if (c := cycle_from(m))]
    assert cycles == []


def test_page_parameters_cannot_shadow_the_view():
    """A page's own URL parameters (e.g. `unit`) never overwrite the store or image."""
    from dashboard import state

    for name in state.VIEW_PARAMS:
        with pytest.raises(ValueError, match="view parameter"):
            state.url_param(name)
        with pytest.raises(ValueError, match="view parameter"):
            state.set_url_param(name, "x")
