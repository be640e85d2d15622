"""Store versions: paths, locks, atomic publication, garbage collection, copy-on-write mutation.

Layout under a root folder (default `artifacts/`) for a store called NAME:

    NAME -> .NAME.versions/<version>       the published version (a relative symlink)
    .NAME.versions/<version>/              store.duckdb + contrib.zarr/ + .lock
    .NAME.versions/staging-<key>/          a build in progress (resumable, never read)
    .NAME.versions/.tmp-<id>/              a mutation in progress (discarded on error)
    .NAME.lock                             serialises publication and mutation of NAME

Publication renames a finished folder to a new version name and swaps the symlink with
`os.replace`, so readers see the old version or the new one, never a half-built one. A reader
resolves the link once and keeps reading its version; it holds a shared `flock` on the version's
`.lock`, and garbage collection (keep the current and the previous version) never deletes a
version that a reader holds. Published versions are never written again: DuckDB readers open
read-only, and `mutate_store` writes a copy (DuckDB file copied, Zarr hard-linked).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from engine.errors import UserError
from engine.store import schema
from engine.store.db import StoreWriter

LOCK_FILE = ".lock"
STAGING_PREFIX = "staging-"
TMP_PREFIX = ".tmp-"
BUILD_DIR = "build"  # per-chunk records of a build in progress, inside a staging folder
KEEP_VERSIONS = 2  # the current one and the previous one
STALE_STAGING_S = 7 * 24 * 3600  # unfinished builds untouched this long are deleted by gc


# ---------------------------------------------------------------- paths and versions


def versions_dir(link: Path) -> Path:
    """`artifacts/NAME` -> `artifacts/.NAME.versions`."""
    link = Path(link)
    return link.parent / f".{link.name}.versions"


def _lock_path(link: Path) -> Path:
    return Path(link).parent / f".{Path(link).name}.lock"


def resolve(path: str | os.PathLike) -> Path:
    """The version folder a store path points at now (the link resolved once, or the folder)."""
    p = Path(path)
    real = Path(os.path.realpath(p))
    if not (real / schema.STORE_DB).is_file():
        if p.is_symlink() or p.exists():
            raise UserError(f"{path} is not a complete store (no {schema.STORE_DB})")
        raise UserError(f"no store at {path}")
    return real


def _new_version_name(vdir: Path) -> str:
    """`v000007-20261129T101500`: a sequence number (call with the store lock held), then time."""
    seqs = [int(p.name[1:7]) for p in vdir.glob("v*") if p.name[1:7].isdigit()]
    return f"v{max(seqs, default=0) + 1:06d}-" + time.strftime("%Y%m%dT%H%M%S", time.gmtime())


_held = threading.local()  # the store locks this thread holds (flock does not nest: it would wait)


@contextmanager
def _store_lock(link: Path) -> Iterator[None]:
    """Exclusive lock serialising publication/mutation of one store (blocks until free).

    Taking it again in the thread that holds it (a `mutate_store` or `publish` nested in a
    `mutate_store` of the same store) would wait for itself forever: that is an error instead.
    Other threads and processes wait their turn.
    """
    path = _lock_path(link)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    held: set[str] = _held.__dict__.setdefault("locks", set())
    if key in held:
        raise UserError(
            f"{link} is already being modified by this thread (a nested mutate_store or publish "
            "of the same store would wait for itself); finish the outer one first"
        )
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            fcntl.flock(f, fcntl.LOCK_UN)


store_lock = _store_lock  # public: builds serialise staging set-up and finalisation with it


def _swap_link(link: Path, target: Path) -> None:
    """Point `link` at `target` atomically (a temp symlink moved over it with os.replace)."""
    link = Path(link)
    if link.exists() and not link.is_symlink():
        raise UserError(f"{link} exists and is not a store link; move it away first")
    tmp = link.parent / f".{link.name}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)


def publish(link: str | os.PathLike, folder: Path) -> Path:
    """Publish a finished folder as the store's new version; returns the version path."""
    link = Path(link)
    with _store_lock(link):
        return _publish_locked(link, folder)


def _publish_locked(link: Path, folder: Path) -> Path:
    """The one publication sequence (call with the store lock held): rename the finished folder
    to a new version name, make both renames durable, swap the link, collect old versions."""
    if link.exists() and not link.is_symlink():
        raise UserError(f"{link} exists and is not a store link; move it away first")
    version = versions_dir(link) / _new_version_name(versions_dir(link))
    os.rename(folder, version)
    (version / LOCK_FILE).touch()
    _fsync_dir(version.parent)
    _swap_link(link, version)
    _fsync_dir(link.parent)
    gc(link)
    return version


publish_locked = _publish_locked  # public: for callers already holding `store_lock`


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def gc(link: str | os.PathLike, keep: int = KEEP_VERSIONS) -> list[Path]:
    """Delete published versions beyond the newest `keep` (current first), except held ones.

    Call with the store lock held (publish and mutate_store do). Returns the deleted folders.
    """
    link = Path(link)
    vdir = versions_dir(link)
    if not vdir.is_dir():
        return []
    current = Path(os.path.realpath(link)) if link.is_symlink() else None
    versions = sorted(
        (p for p in vdir.iterdir() if p.name.startswith("v") and p.is_dir()),
        key=lambda p: p.name,
        reverse=True,
    )
    keepers = ([current] if current else []) + [v for v in versions if v != current]
    deleted = []
    for v in keepers[keep:]:
        if _try_delete(v):
            deleted.append(v)
    for p in vdir.iterdir():  # mutations interrupted by a crash (the lock proves none is live)
        if p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(STAGING_PREFIX) and _age_s(p / BUILD_DIR) > STALE_STAGING_S:
            shutil.rmtree(p, ignore_errors=True)  # a build abandoned long ago
    return deleted


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _try_delete(version: Path) -> bool:
    """Delete a version unless a reader holds its lock (shared flock)."""
    lock = version / LOCK_FILE
    try:
        f = open(lock, "a")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        shutil.rmtree(version, ignore_errors=True)
        return True


@contextmanager
def mutate_store(
    path: str | os.PathLike, *, expect_version: str | os.PathLike | None = None
) -> Iterator[StoreWriter]:
    """A `StoreWriter` (typed writes) on a new copy-on-write version, published on clean exit.

    The DuckDB file is copied and the Zarr group hard-linked; on an exception the copy is
    discarded and the published store is untouched. Mutations of one store are serialised.

    `expect_version`: the version folder the caller read (`StoreReader.version_path`). If the
    store has been republished since (e.g. rebuilt over other images), nothing is written and a
    UserError says so: results computed from one version never land on another.
    """
    link = Path(path)
    if not link.is_symlink():
        raise UserError(f"{path} is not a store link (expected artifacts/NAME)")
    with _store_lock(link):
        current = resolve(link)
        if expect_version is not None and Path(os.path.realpath(expect_version)) != current:
            raise UserError(
                f"{path} was republished while this ran (read {Path(expect_version).name}, now "
                f"{current.name}); nothing was written: run it again on the new version"
            )
        tmp = versions_dir(link) / f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            shutil.copy2(current / schema.STORE_DB, tmp / schema.STORE_DB)
            shutil.copytree(
                current / schema.STORE_ZARR, tmp / schema.STORE_ZARR, copy_function=os.link
            )
            con = duckdb.connect(str(tmp / schema.STORE_DB))
            try:
                yield StoreWriter(con)
                con.execute("CHECKPOINT")
            finally:
                con.close()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _publish_locked(link, tmp)
