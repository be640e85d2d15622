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
    from engine.registry import DEMO_DIR

    return "demo" if (DEMO_DIR / "open_clip_config.json").is_file() else "tiny-test"


def build_fixture(base: Path) -> tuple[Path, Path, bool]:
    """Build (once per pytest session base folder) the fixture store; shared by the AppTest
    and browser tests. Returns (artifacts folder, store path, interpreted?)."""
    root = base / "dashboard-artifacts"
    store = root / "fixture"
    done = root / ".fixture-done"
    if done.is_file():
        return root, store, done.read_text() == "interpreted"
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
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    r = _engine("interpret", "--store", str(store))
    assert r.returncode == 0, r.stderr
    interpreted = True  # the pages' uninterpreted branches are covered by the paper-shaped store
    done.write_text("interpreted" if interpreted else "raw")
    return root, store, interpreted


@pytest.fixture(scope="session")
def store_env(tmp_path_factory):
    """(artifacts folder, store path, interpreted?) — built once per test session."""
    return build_fixture(tmp_path_factory.getbasetemp())


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
    import uuid

    import numpy as np
    import pandas as pd

    from engine import schema, store

    layers, n_heads, d_embed = [8, 9, 10, 11], 12, 512
    chunk = 64
    sizes = {
        "image": n_images,
        "layer": 4,
        "head": n_heads,
        "d_embed": d_embed,
        "y": schema.THUMB_SIZE,
        "x": schema.THUMB_SIZE,
        "rgb": 3,
        "image_chunk": chunk,
    }
    staging = store.staging_dir(link, uuid.uuid4().hex[:8])
    staging.mkdir(parents=True)
    arrays = store.create_arrays(staging, sizes, attrs={"layers": layers})
    rng = np.random.default_rng(0)
    head_out = rng.standard_normal((n_images, 4, n_heads, d_embed)).astype(np.float16)
    thumbs = rng.integers(0, 255, (n_images, schema.THUMB_SIZE, schema.THUMB_SIZE, 3), np.uint8)
    store.write_rows(
        arrays,
        0,
        {
            "head_out": head_out,
            "thumbnail": thumbs,
            "output": head_out.astype(np.float32).sum(axis=(1, 2)),
        },
    )
    dims = {
        "n_layers": 12,
        "n_heads": n_heads,
        "d_model": 768,
        "d_head": 64,
        "d_embed": d_embed,
        "image_size": 224,
        "patch_size": 32,
        "grid": 7,
    }
    spec = "ViT-B-32/openai"
    tables = {
        "models": pd.DataFrame(
            [
                {
                    "model_spec": spec,
                    "arch": "ViT-B-32",
                    "weights_hash": "x",
                    "random_weights": False,
                    **dims,
                }
            ]
        ),
        "images": pd.DataFrame(
            {
                "image_id": np.arange(n_images, dtype=np.int32),
                "path": [f"nowhere/{i}.jpg" for i in range(n_images)],
                "sha256": ["0" * 64] * n_images,
                "width": 224,
                "height": 224,
                "class": None,
            }
        ),
    }
    meta = {
        "model_spec": spec,
        "arch": "ViT-B-32",
        "layers": layers,
        **dims,
        "built_at": "2026-01-01 00:00:00",
        "run_id": "paper-shaped",
        "images_source": "random test data",
        "schema_version": schema.SCHEMA_VERSION,
    }
    store.write_database(staging, tables, meta)
    store.finish_staging(staging)
    return store.publish(link, staging)
