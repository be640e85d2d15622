"""Store handles: one open read-only reader per store link, reopened when the link moves on.

A reader holds a shared lock on its version, which garbage collection respects; so a cached
reader of a superseded version would keep that version on disk for as long as the process
lives. `open_store` therefore checks `StoreReader.is_stale` on every call: a stale reader is
closed and the link reopened at its current version. Caches of data read from a store are keyed
by `version_key` (the version folder), so they never mix two versions.
"""

from __future__ import annotations

import threading
from pathlib import Path

import streamlit as st

from dashboard import settings
from engine.errors import UserError
from engine.store import StoreReader, list_stores


class _Readers:
    """Open readers by link path (thread-safe: Streamlit sessions are threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_link: dict[str, StoreReader] = {}

    def get(self, path: str) -> StoreReader:
        link = str(Path(path).absolute())
        with self._lock:
            r = self._by_link.get(link)
            if r is not None and r.is_stale:
                del self._by_link[link]
                r.close()  # releases the version's lock: gc may collect it now
                r = None
            if r is None:
                r = StoreReader(link)
                self._by_link[link] = r
            return r

    def by_version(self, key: str) -> StoreReader:
        """The open reader of version folder `key` (UserError once the store moved on)."""
        with self._lock:
            for r in self._by_link.values():
                if str(r.version_path) == key and not r.is_stale:
                    return r
        raise UserError("the store changed while this page was drawn; rerun to see the new one")

    def close_all(self) -> None:
        with self._lock:
            for r in self._by_link.values():
                r.close()
            self._by_link.clear()


@st.cache_resource(show_spinner=False)
def readers() -> _Readers:
    """The process-wide reader registry."""
    return _Readers()


def open_store(path: str) -> StoreReader:
    """The store at `path` (a store link or a version folder), read-only, its current version;
    UserError if unusable."""
    if not path or not Path(path).exists():
        raise UserError(f"no store at {path!r}")
    try:
        return readers().get(path)
    except UserError:
        raise
    except Exception as e:  # a folder that is not a store, or a broken one
        raise UserError(f"cannot open the store at {path}: {str(e).splitlines()[0][:200]}") from e


def version_key(store: StoreReader) -> str:
    """The version folder the reader reads: the key of every cache of store data."""
    return str(store.version_path)


def reader(key: str) -> StoreReader:
    """The open reader of a version key (inside cached functions)."""
    return readers().by_version(key)


def list_store_paths() -> list[str]:
    """Every store under the artifacts folder, as paths (may be empty); `demo` first."""
    root = settings.artifacts_root()
    if not root.is_dir():
        return []
    paths = _list_store_paths(str(root))
    return sorted(paths, key=lambda p: (Path(p).name != "demo", p))


@st.cache_data(show_spinner=False, ttl=15)  # listing opens every store: not on every rerun
def _list_store_paths(root: str) -> list[str]:
    return [s.path for s in list_stores(root)]


def same_store(a: str, b: str) -> bool:
    """Whether two paths name the same store version now."""
    return Path(a).resolve() == Path(b).resolve()


def store_layers(store: StoreReader) -> list[int]:
    return [int(x) for x in store.info["layers"]]


def store_heads(store: StoreReader) -> list[tuple[int, int]]:
    n_heads = int(store.info["n_heads"])
    return [(l, h) for l in store_layers(store) for h in range(n_heads)]
