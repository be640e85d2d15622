"""The store: all file I/O of decompositions and interpretations (Zarr arrays + DuckDB tables).

schema (declared once) -> versions (paths, locks, atomic publication, gc, copy-on-write mutation)
-> writer (new versions, build records; `StoreWriter`, the typed table writes of `db`) and
reader (read-only views, typed records `StoreMeta` and `ModelRecord`). No SQL naming a store
table is written outside this package (tests/test_store_contract.py checks it).
"""

from engine.store import schema
from engine.store.db import StoreWriter
from engine.store.reader import StoreReader, StoreSummary, list_stores, open_store
from engine.store.schema import ModelRecord, RunRecord, StoreMeta
from engine.store.versions import (
    BUILD_DIR,
    LOCK_FILE,
    STAGING_PREFIX,
    TMP_PREFIX,
    gc,
    mutate_store,
    publish,
    publish_locked,
    resolve,
    store_lock,
    versions_dir,
)
from engine.store.writer import (
    SPARSE_ZARR,
    compact_rows,
    create_arrays,
    create_tables,
    finish_staging,
    iter_chunk_records,
    load_build_state,
    load_chunk_record,
    load_chunk_records,
    new_database,
    open_arrays,
    recorded_chunks,
    resize_images,
    save_build_state,
    save_chunk_record,
    staging_dir,
    write_constants,
    write_database,
    write_rows,
)

__all__ = [
    "BUILD_DIR",
    "SPARSE_ZARR",
    "LOCK_FILE",
    "STAGING_PREFIX",
    "TMP_PREFIX",
    "ModelRecord",
    "RunRecord",
    "StoreMeta",
    "StoreWriter",
    "StoreReader",
    "StoreSummary",
    "create_arrays",
    "create_tables",
    "compact_rows",
    "finish_staging",
    "gc",
    "iter_chunk_records",
    "list_stores",
    "load_build_state",
    "load_chunk_record",
    "load_chunk_records",
    "mutate_store",
    "new_database",
    "open_arrays",
    "open_store",
    "publish",
    "publish_locked",
    "recorded_chunks",
    "resize_images",
    "resolve",
    "save_build_state",
    "save_chunk_record",
    "schema",
    "staging_dir",
    "store_lock",
    "versions_dir",
    "write_constants",
    "write_database",
    "write_rows",
]
