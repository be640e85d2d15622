"""Store sessions: one `engine.session.StoreSession` per store link, shared by every browser
session of the process and reopened when the link moves on.

The session is the engine's one way to a store: its verified model, heads, texts, the five
analyses and ablation (the pages call nothing else). A session's reader holds a shared lock on
its version, which garbage collection respects; so a cached session of a superseded version
would keep that version on disk for as long as the process lives. `open_store` therefore checks
`is_stale` on every call: a stale session is closed and the link reopened at its current
version. Every session shares one byte-bounded per-head cache (`CLIP_INTERPRET_CACHE_MB`), so
the server keeps one budget whatever the number of stores or users. Caches of data read from a
store are keyed by `version_key` (the version folder), so they never mix two versions.
"""

from __future__ import annotations

import threading
from pathlib import Path

import streamlit as st

from dashboard import settings
from engine.errors import UserError
from engine.session import StoreSession
from engine.store import list_stores
from engine.store.cache import ByteBudgetCache


class _Sessions:
    """Open store sessions by link path (thread-safe: Streamlit sessions are threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_link: dict[str, StoreSession] = {}
        self.heads_cache = ByteBudgetCache()  # one budget for every store of the process

    def get(self, path: str) -> StoreSession:
        link = str(Path(path).absolute())
        with self._lock:
            s = self._by_link.get(link)
            if s is not None and s.is_stale:
                del self._by_link[link]
                s.close()  # releases the version's lock: gc may collect it now
                s = None
            if s is None:
                s = StoreSession.open(link, heads_cache=self.heads_cache)
                self._by_link[link] = s
            return s

    def by_version(self, key: str) -> StoreSession:
        """The open session of version folder `key` (UserError once the store moved on)."""
        with self._lock:
            for s in self._by_link.values():
                if str(s.version_path) == key and not s.is_stale:
                    return s
        raise UserError("the store changed while this page was drawn; rerun to see the new one")

    def close_all(self) -> None:
        with self._lock:
            for s in self._by_link.values():
                s.close()
            self._by_link.clear()


@st.cache_resource(show_spinner=False)
def sessions() -> _Sessions:
    """The process-wide registry of store sessions."""
    return _Sessions()


def open_store(path: str) -> StoreSession:
    """The session of the store at `path` (a store link or a version folder), read-only, its
    current version; UserError if unusable."""
    if not path or not Path(path).exists():
        raise UserError(f"no store at {path!r}")
    try:
        return sessions().get(path)
    except UserError:
        raise
    except Exception as e:  # a folder that is not a store, or a broken one
        raise UserError(f"cannot open the store at {path}: {str(e).splitlines()[0][:200]}") from e


def version_key(store: StoreSession) -> str:
    """The version folder the reader reads: the key of every cache of store data."""
    return str(store.version_path)


def session(key: str) -> StoreSession:
    """The open session of a version key (inside cached functions)."""
    return sessions().by_version(key)


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
