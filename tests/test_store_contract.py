"""The store contract: one typed metadata record, typed writes, every fact persisted once, SQL
naming store tables only inside engine/store, and store | sources | model independent."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from dataclasses import fields, replace
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import zarr

from engine import store
from engine.errors import UserError
from engine.pipeline.build import BuildParams, build_store
from engine.store import schema

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    link = tmp_path_factory.mktemp("contract") / "artifacts" / "s"
    link.parent.mkdir()
    build_store(BuildParams(model="tiny-test", images="synthetic:24", store=str(link),
                            random_weights=True, progress=False, layers="2"))  # fmt: skip
    return link


def _meta_rows(version: Path) -> dict[str, str]:
    con = duckdb.connect(str(version / schema.STORE_DB), read_only=True)
    try:
        return dict(con.execute("SELECT key, value FROM store_meta").fetchall())
    finally:
        con.close()


@pytest.mark.slow
def test_a_build_writes_the_typed_record_and_each_fact_once(built):
    with store.open_store(built) as r:
        version, meta, model = r.version_path, r.meta, r.model_record
        params = json.loads(r.runs("build")["parameters"].iloc[0])
        assert r.rest_layers == [l for l in range(model.n_layers) if l not in r.layers]
    rows = _meta_rows(version)
    # exactly the record's fields: no model fact, no rest_layers (derived), nothing untyped
    assert set(rows) == {f.name for f in fields(schema.StoreMeta)} | {"meta_version"}
    assert schema.StoreMeta.from_rows(rows) == meta and meta.layers == (
        model.n_layers - 2,
        model.n_layers - 1,
    )
    assert "layers" not in params and params["layers_arg"] == "2"  # the argument, not the fact
    assert dict(zarr.open_group(str(version / schema.STORE_ZARR), mode="r").attrs) == {}


@pytest.mark.slow
def test_a_missing_metadata_key_is_an_error_not_a_default(built, tmp_path):
    import shutil

    with store.open_store(built) as r:
        src = r.version_path
    for key in ("image_chunk", "layers", "n_skipped"):
        copy = tmp_path / key
        shutil.copytree(src, copy)
        con = duckdb.connect(str(copy / schema.STORE_DB))
        con.execute("DELETE FROM store_meta WHERE key = ?", [key])
        con.close()
        with pytest.raises(UserError, match=f"store_meta lacks {key}"):
            store.open_store(copy)


@pytest.mark.slow
def test_a_missing_model_fact_is_an_error(built, tmp_path):
    import shutil

    with store.open_store(built) as r:
        src = r.version_path
    shutil.copytree(src, tmp_path / "v")
    con = duckdb.connect(str(tmp_path / "v" / schema.STORE_DB))
    con.execute("UPDATE models SET weights_hash = NULL")
    con.close()
    with pytest.raises(UserError, match="models table lacks weights_hash"):
        store.open_store(tmp_path / "v")


@pytest.mark.unit
def test_legacy_metadata_is_upgraded_explicitly():
    """Rows written before META_VERSION 1 (no meta_version, model facts, rest_layers) read as the
    record; a newer metadata version is refused."""
    legacy = {"schema_version": 2, "layers": [2, 3], "rest_layers": [0, 1], "n_layers": 4,
              "model_spec": "x", "image_chunk": 8, "thumb_size": 64, "images_source": "s",
              "built_at": "t", "run_id": "r", "code_version": "c", "build_key": "k",
              "factors": None, "image_set_hash": "h", "n_skipped": 0,
              "reconstruction_error": 0.0, "reconstruction_tolerance": 1e-4}  # fmt: skip
    meta = schema.StoreMeta.from_rows({k: json.dumps(v) for k, v in legacy.items()})
    assert meta.layers == (2, 3) and meta.random_data is False
    rows = {**meta.to_rows(), "meta_version": json.dumps(schema.META_VERSION + 1)}
    with pytest.raises(UserError, match="metadata version"):
        schema.StoreMeta.from_rows(rows)


@pytest.mark.slow
def test_mutate_store_hands_out_typed_writes_only(built):
    with store.open_store(built) as r:
        v, meta = r.version_path, r.meta
    with store.mutate_store(built, expect_version=v) as w:
        assert isinstance(w, store.StoreWriter) and not hasattr(w, "execute")
        with pytest.raises(KeyError, match="no column"):  # a misspelt column never vanishes
            w.append("head_labels", pd.DataFrame([{"layer": 0, "head": 0, "lable": "x"}]))
        with pytest.raises(KeyError, match="not a store table"):
            w.append("head_label", pd.DataFrame([{"layer": 0}]))
        w.replace_interpretation(
            {"head_labels": pd.DataFrame([{"layer": 0, "head": 0, "label": "colour"}])}
        )
        w.set_model(replace(r.model_record, arch="renamed"))
    with store.open_store(built) as r:
        assert r.head_labels() == {(0, 0): "colour"} and r.model_record.arch == "renamed"
        assert r.meta == meta  # the metadata record is untouched by the mutation


# ------------------------------------------------------------------------- static contracts

TABLE_SQL = re.compile(
    r"\b(?:FROM|INTO|UPDATE|TABLE|JOIN)\s+\"?(" + "|".join(schema.TABLES) + r")\b"
)  # SQL keywords upper case, as the code base writes them (prose says "table x" in lower case)
CHECKED = ("engine", "dashboard", "scripts", "benchmarks")


def sql_naming_store_tables(root: Path) -> list[str]:
    """Lines outside engine/store holding SQL text that names a store table."""
    hits = []
    for folder in CHECKED:
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("engine/store/"):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                for lit in re.findall(r"(?:'[^']*'|\"[^\"]*\")", line):
                    if TABLE_SQL.search(lit):
                        hits.append(f"{rel}:{n}: {line.strip()}")
    return hits


@pytest.mark.unit
def test_no_sql_names_a_store_table_outside_engine_store():
    assert sql_naming_store_tables(ROOT) == []


@pytest.mark.unit
def test_the_sql_check_finds_what_it_looks_for(tmp_path):
    (tmp_path / "engine" / "cli").mkdir(parents=True)
    (tmp_path / "engine" / "cli" / "x.py").write_text(
        'r.query("SELECT path FROM skipped_files LIMIT 5")\nprint("rows from the store")\n'
    )
    for folder in CHECKED[1:]:
        (tmp_path / folder).mkdir()
    assert sql_naming_store_tables(tmp_path) == [
        'engine/cli/x.py:1: r.query("SELECT path FROM skipped_files LIMIT 5")'
    ]


def _imports(package: str) -> set[str]:
    out = set()
    for path in (ROOT / "engine" / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                out.add(node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
    return out


@pytest.mark.unit
def test_store_sources_and_model_are_independent():
    siblings = ("store", "sources", "model")
    for pkg in siblings:
        for mod in _imports(pkg):
            for other in siblings:
                assert other == pkg or not mod.startswith(f"engine.{other}"), (pkg, mod)
    layers = next(c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())
                  ["tool"]["importlinter"]["contracts"] if c["type"] == "layers")  # fmt: skip
    row = next(x for x in layers["layers"] if "engine.store" in x)
    # `|` declares independent siblings to import-linter (`:` would let them import each other)
    assert sorted(p.strip() for p in row.split("|")) == [f"engine.{p}" for p in sorted(siblings)]
    assert layers["layers"].index("engine.session") == layers["layers"].index(row) - 1
