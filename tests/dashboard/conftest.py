"""A small store built once per session with the real CLI, for the dashboard tests.

`demo` model when its weights are bundled, else the random `tiny-test` model; 200 synthetic
images; interpreted with `python -m engine interpret`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 200
NEURON_LAYER = {"demo": "6-6", "tiny-test": "1-1"}  # one neuron layer (the Neurons page)


def _engine(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _model() -> str:
    from engine.model import DEMO_DIR

    return "demo" if (DEMO_DIR / "open_clip_config.json").is_file() else "tiny-test"


def build_fixture(base: Path) -> tuple[Path, Path, bool]:
    """Build (once per pytest session base folder) the fixture store; shared by the AppTest
    and browser tests. Returns (artifacts folder, store path, interpreted? = True).

    Between `build` and `interpret` the built version is copied to a second artifacts folder
    (`raw_fixture`): the same store, never interpreted, for the pages' uninterpreted branches."""
    root = base / "dashboard-artifacts"
    store = root / "fixture"
    done = root / ".fixture-done"
    if done.is_file():
        return root, store, True
    root.mkdir(parents=True, exist_ok=True)
    model = _model()
    r = _engine(
        "build",
        "--model",
        model,
        "--images",
        f"synthetic:{N_IMAGES}",
        "--store",
        str(store),
        "--neurons",
        NEURON_LAYER[model],
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    _copy_store(store, _raw_root(base) / "fixture")
    r = _engine("interpret", "--store", str(store))
    assert r.returncode == 0, r.stderr
    r = _engine("interpret", "--store", str(store), "--neurons", "all", "--no-progress")
    assert r.returncode == 0, r.stderr
    done.write_text("interpreted")
    return root, store, True


def _raw_root(base: Path) -> Path:
    return base / "dashboard-artifacts-raw"


def _copy_store(link: Path, dest: Path) -> None:
    """A copy of the store's current version published at `dest` (a link, as stores are)."""
    import shutil

    from engine.store import versions_dir

    version = Path(os.path.realpath(link))
    target = versions_dir(dest) / version.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(version, target)
    os.symlink(os.path.relpath(target, dest.parent), dest)


def raw_fixture(base: Path) -> tuple[Path, Path, bool]:
    """(artifacts folder, store path, interpreted? = False): the fixture before `interpret`."""
    build_fixture(base)
    return _raw_root(base), _raw_root(base) / "fixture", False


@pytest.fixture(scope="session")
def store_env(tmp_path_factory):
    """(artifacts folder, store path, interpreted?) — built once per test session."""
    return build_fixture(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session", params=["interpreted", "raw"])
def either_store_env(request, tmp_path_factory):
    """The fixture store interpreted, then the same store as built (never interpreted)."""
    base = tmp_path_factory.getbasetemp()
    return build_fixture(base) if request.param == "interpreted" else raw_fixture(base)


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under a folder (following the store link)."""
    real = Path(os.path.realpath(folder))
    return {
        str(p.relative_to(real)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(real.rglob("*"))
        if p.is_file()
    }


def paper_shaped_store(link: Path, n_images: int = 64) -> Path:
    """A store claiming the paper's ViT-B-32/openai (whose weights are not on this machine):
    last 4 layers x 12 heads x 512, random contributions, written through engine.store."""
    from engine.store.random_store import write_random_store

    return write_random_store(
        link,
        n_images,
        spec="ViT-B-32/openai",
        weights_hash="x",
        random_weights=False,
        thumbnails=True,
        image_chunk=64,
        run_id="paper-shaped",
    )


def relabelled_copy(store: Path, dest: Path, label_of) -> Path:
    """A copy of `store` published at `dest` (a new artifacts folder's store link) with every
    head's label replaced by `label_of(layer, head)` and no ground truth (so its properties
    are exactly those labels). Written through engine.store, as `interpret` writes."""
    import pandas as pd

    from engine.session import StoreSession
    from engine.store import mutate_store

    dest.parent.mkdir(parents=True, exist_ok=True)
    _copy_store(store, dest)
    with StoreSession.open(dest) as s:
        heads = s.heads()
    rows = [
        {"layer": l, "head": h, "label": label_of(l, h), "labeller": "offline"} for l, h in heads
    ]
    with mutate_store(dest) as w:
        w.replace("head_labels", pd.DataFrame(rows))
        w.delete("ground_truth")
    return dest
