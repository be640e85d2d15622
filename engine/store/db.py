"""`StoreWriter`: every write to a store's DuckDB tables (typed records, per-table methods).

The one module that writes SQL naming a store table; `new_database` (a new version) and
`mutate_store` (a copy-on-write version) hand one out.
"""

from __future__ import annotations

import json

import duckdb
import pandas as pd

from engine.store import schema


class StoreWriter:
    """Typed writes to a store's database: every write of every table goes through here.

    Handed out by `new_database` (a new version) and `mutate_store` (a copy-on-write version);
    nothing outside `engine.store` writes SQL. DataFrames are matched to a table's columns by
    name; a column the table does not have is an error (a misspelt column never vanishes).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con
        self._columns: dict[str, list[str]] = {}

    def columns(self, table: str) -> list[str]:
        if table not in schema.TABLES:
            raise KeyError(f"{table!r} is not a store table ({', '.join(schema.TABLES)})")
        if table not in self._columns:
            desc = self._con.execute(f"SELECT * FROM {table} LIMIT 0").description
            self._columns[table] = [d[0] for d in desc]
        return self._columns[table]

    # ---- generic, per table (every table of schema.TABLES)

    def append(self, table: str, df: pd.DataFrame | None) -> None:
        """Append rows (columns by name; the table's other columns are NULL)."""
        if df is None or len(df) == 0:
            return
        extra = sorted(set(df.columns) - set(self.columns(table)))
        if extra:
            raise KeyError(f"table {table} has no column(s) {extra} ({self.columns(table)})")
        self._con.register("_rows", df)
        try:
            self._con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
        finally:
            self._con.unregister("_rows")

    def delete(self, table: str, **where) -> None:
        """Delete the rows whose columns hold any of the given values (`task=["colour"]`);
        with no condition, every row."""
        cols = self.columns(table)
        sql, params = f"DELETE FROM {table}", []
        conds = []
        for col, values in where.items():
            if col not in cols:
                raise KeyError(f"table {table} has no column {col!r}")
            values = list(values) if isinstance(values, list | tuple | set) else [values]
            if not values:
                return  # nothing matches an empty set
            conds.append(f'"{col}" IN ({", ".join("?" * len(values))})')
            params += values
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        self._con.execute(sql, params)

    def replace(self, table: str, df: pd.DataFrame | None) -> None:
        """Every row of `table` replaced by `df`."""
        self.delete(table)
        self.append(table, df)

    def recreate(self, table: str) -> None:
        """Drop `table` and create it from the schema (a table rewritten whole each run, e.g. the
        unit tables: a store written under an older schema gets today's columns)."""
        if table not in schema.TABLES:
            raise KeyError(f"{table!r} is not a store table ({', '.join(schema.TABLES)})")
        self._con.execute(f"DROP TABLE IF EXISTS {table}")
        self._con.execute(schema.TABLES[table])
        self._columns.pop(table, None)

    def ensure(self, table: str) -> None:
        """Create `table` from the schema if this store predates it."""
        if table not in schema.TABLES:
            raise KeyError(f"{table!r} is not a store table ({', '.join(schema.TABLES)})")
        self._con.execute(
            schema.TABLES[table].replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)
        )
        self._columns.pop(table, None)

    def upgrade(self, table: str) -> None:
        """Create `table` if this store predates it, and add the columns it lacks (NULL in its
        existing rows): a store written by an older schema gets today's columns, keeping rows."""
        self.ensure(table)
        have = set(self.columns(table))
        for name, typ in schema.table_columns(table):
            if name not in have:
                self._con.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {typ}')
        self._columns.pop(table, None)

    def replace_units(
        self, table: str, df: pd.DataFrame | None, kind: str, layers: list[int] | None = None
    ) -> None:
        """A unit table's rows of one `kind` (head | neuron; rows without a kind are heads)
        replaced by `df`, other kinds kept; `layers`: only those layers' rows of the kind."""
        if kind not in schema.UNIT_KINDS:
            raise KeyError(f"unit kind {kind!r} is not one of {schema.UNIT_KINDS}")
        self.upgrade(table)
        cond = "(kind IS NULL OR kind = 'head')" if kind == "head" else "kind = ?"
        params = [] if kind == "head" else [kind]
        if layers is not None:
            layers = [int(l) for l in layers]
            if not layers:
                return self.append(table, df)
            cond += f" AND layer IN ({', '.join('?' * len(layers))})"
            params += layers
        self._con.execute(f"DELETE FROM {table} WHERE {cond}", params)
        self.append(table, df)

    # ---- typed records

    def set_meta(self, meta: schema.StoreMeta) -> None:
        """The store's metadata record, written whole (the one place `store_meta` is written)."""
        for key, value in meta.to_rows().items():
            self._con.execute("INSERT OR REPLACE INTO store_meta VALUES (?, ?)", [key, value])

    def set_interpretation(self, params: dict) -> None:
        """The latest interpretation's parameters (`StoreReader.interpretation`)."""
        self._con.execute(
            "INSERT OR REPLACE INTO store_meta VALUES (?, ?)",
            [schema.INTERPRETATION_META_KEY, json.dumps(params)],
        )

    def set_model(self, model: schema.ModelRecord) -> None:
        self.replace("models", pd.DataFrame([model.as_row()]))

    def record_run(self, run: schema.RunRecord) -> None:
        row = run.as_row()
        for k in ("started_at", "finished_at"):
            row[k] = pd.Timestamp(row[k])
        self.append("runs", pd.DataFrame([row]))

    # ---- what the pipelines write, one method per kind of write

    def replace_interpretation(self, tables: dict[str, pd.DataFrame]) -> None:
        """One interpretation replaces the previous one (every INTERPRETATION_TABLES table)."""
        unknown = set(tables) - set(schema.INTERPRETATION_TABLES)
        if unknown:
            raise KeyError(f"not interpretation tables: {sorted(unknown)}")
        for table in schema.INTERPRETATION_TABLES:
            self.replace(table, tables.get(table))

    def add_llm_responses(self, entries: list[tuple[str, str, str]]) -> None:
        """(prompt_hash, model, response) rows into `llm_cache` (a prompt's newest response)."""
        if not entries:
            return
        now = pd.Timestamp.now(tz="UTC").tz_localize(None)
        df = pd.DataFrame(entries, columns=["prompt_hash", "model", "response"]).assign(
            created_at=now
        )
        df = df.drop_duplicates("prompt_hash", keep="last")
        self.delete("llm_cache", prompt_hash=df["prompt_hash"].tolist())
        self.append("llm_cache", df)

    def replace_neuron_layers(self, tables: dict[str, pd.DataFrame], layers: list[int]) -> None:
        """`interpret --neurons`: the rows of `layers` in every NEURON_TABLES table replaced
        (other layers' rows kept); the tables are created in a store older than them."""
        unknown = set(tables) - set(schema.NEURON_TABLES)
        if unknown:
            raise KeyError(f"not neuron tables: {sorted(unknown)}")
        for table in schema.NEURON_TABLES:
            self._con.execute(
                schema.TABLES[table].replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)
            )
            self._columns.pop(table, None)
            self.delete(table, layer=[int(l) for l in layers])
            self.append(table, tables.get(table))

    def add_neuron_ablation(self, tables: dict[str, pd.DataFrame]) -> None:
        """`ablate` of neurons: one run's rows appended to the NEURON_ABLATION_TABLES (each
        created first in a store older than them)."""
        unknown = set(tables) - set(schema.NEURON_ABLATION_TABLES)
        if unknown:
            raise KeyError(f"not neuron ablation tables: {sorted(unknown)}")
        for table in schema.NEURON_ABLATION_TABLES:
            self.ensure(table)
            self.append(table, tables.get(table))

    def replace_zeroshot_classes(self, df: pd.DataFrame) -> None:
        """The class embeddings of the tasks in `df` (other tasks' rows are kept)."""
        self.delete("zeroshot_classes", task=sorted(set(df["task"])) if len(df) else [])
        self.append("zeroshot_classes", df)
