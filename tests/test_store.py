"""Store: schema round trips, atomic publication, readers pinned to their version, mutation."""

from __future__ import annotations

import json
import os
import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from engine import store
from engine.errors import UserError
from engine.store import schema

pytestmark = pytest.mark.unit

SIZES = {"layer": 2, "head": 3, "d_embed": 8, "y": 64, "x": 64, "rgb": 3, "image_chunk": 4}
LAYERS = [5, 7]


def publish_fake(link, n_images: int, fill: float, factors: bool = False):
    """Publish a store with known values: head_out[i, l, h, :] = fill + i + 10 l + 100 h."""
    staging = store.staging_dir(link, f"test{fill}")
    staging.mkdir(parents=True)
    sizes = {**SIZES, "image": n_images + 3}  # created larger, shrunk like a build does
    arrays = store.create_arrays(staging, sizes)
    i, l, h = np.meshgrid(np.arange(n_images), np.arange(2), np.arange(3), indexing="ij")
    head = (fill + i + 10 * l + 100 * h).astype(np.float16)[..., None]  # [image, layer, head, 1]
    data = {
        "head_out": np.broadcast_to(head, (n_images, 2, 3, 8)),
        "output": np.full((n_images, 8), fill, np.float32),
        "resid_norm": np.arange(n_images, dtype=np.float32),
        "ln_scale": np.ones(n_images, np.float32),
        "thumbnail": np.arange(n_images, dtype=np.uint8)[:, None, None, None]
        * np.ones((1, 64, 64, 3), np.uint8),
    }
    store.write_rows(arrays, 0, data)
    store.resize_images(arrays, n_images)
    tables = {
        "images": pd.DataFrame(
            {
                "image_id": range(n_images),
                "path": [f"img{i}.png" for i in range(n_images)],
                "sha256": ["0" * 64] * n_images,
                "width": 10,
                "height": 10,
                "class": ["a"] * n_images,
            }
        ),
        "models": pd.DataFrame([{"model_spec": "fake", "n_layers": 8, "n_heads": 3}]),
    }
    if factors:
        tables["image_factors"] = pd.DataFrame(
            {
                "image_id": np.repeat(np.arange(n_images), 2),
                "factor": ["colour", "shape"] * n_images,
                "value_code": np.arange(2 * n_images) % 3,
                "value": "x",
            }
        )
    meta = {"layers": LAYERS, "model_spec": "fake", "factors": ["colour", "shape"]}
    store.write_database(staging, tables, meta)
    return store.publish(link, staging)


def test_schema_round_trip(tmp_path):
    arrays = store.create_arrays(tmp_path, {**SIZES, "image": 10})
    for name, spec in schema.ARRAYS.items():
        a = arrays[name]
        assert a.metadata.dimension_names == spec.dims
        assert a.dtype == np.dtype(spec.dtype)
        assert a.shape == spec.shape({**SIZES, "image": 10})
    head = arrays["head_out"]
    assert head.chunks == (4, 1, 1, 8)  # one (layer, head) per inner chunk
    assert head.shards == (4, 2, 3, 8)  # one shard per image chunk
    assert arrays["thumbnail"].chunks == (1, 64, 64, 3)  # one thumbnail per inner chunk
    assert arrays["thumbnail"].shards == (4, 64, 64, 3)
    store.write_database(tmp_path, {}, {"k": [1, 2]})
    con = duckdb.connect(str(tmp_path / schema.STORE_DB), read_only=True)
    tables = {
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    assert tables == set(schema.TABLES)
    cols = [r[0] for r in con.execute("DESCRIBE images").fetchall()]
    assert cols == ["image_id", "path", "sha256", "width", "height", "class"]
    assert json.loads(con.execute("SELECT value FROM store_meta WHERE key='k'").fetchone()[0]) == [
        1,
        2,
    ]
    con.close()


def test_image_chunk_bounds():
    assert schema.image_chunk_for(4, 12, 512) == 1024  # ViT-B, last 4 layers: 48 MiB chunk
    assert schema.image_chunk_for(24, 16, 768) == 64  # ViT-L, all layers: floor
    c = schema.image_chunk_for(12, 12, 512)
    assert c * 12 * 12 * 512 * 2 <= schema.HEAD_OUT_CHUNK_BUDGET and c & (c - 1) == 0


def test_reader_reads_what_was_written(tmp_path):
    link = tmp_path / "s"
    publish_fake(link, 10, 0.0, factors=True)
    with store.open_store(link) as r:
        assert r.info["n_images"] == 10 and r.layers == LAYERS
        h = r.head_out(7, 2)  # absolute layer 7 = stored index 1
        assert h.dtype == np.float32 and h.shape == (10, 8)
        np.testing.assert_array_equal(h[:, 0], np.arange(10) + 10 + 200)
        assert r.head_out(7, 2) is h  # cached
        assert r.head_out_array.shape == (10, 2, 3, 8)
        assert r.output().shape == (10, 8)
        t = r.thumbnails([7, 2, 7])
        assert t.shape == (3, 64, 64, 3) and t[:, 0, 0, 0].tolist() == [7, 2, 7]
        assert r.thumbnails([]).shape == (0, 64, 64, 3)
        names, codes = r.factors()
        assert names == ["colour", "shape"] and codes.shape == (10, 2)
        assert codes[3].tolist() == [6 % 3, 7 % 3]
        assert list(r.images().columns) == [
            "image_id",
            "path",
            "sha256",
            "width",
            "height",
            "class",
        ]
        assert not r.interpreted
        with pytest.raises(UserError, match="not stored"):
            r.head_out(3, 0)
        with pytest.raises(duckdb.Error):
            r.query("INSERT INTO llm_cache VALUES ('a', 'b', 'c', now())")  # read-only


def test_no_factors_and_missing_store(tmp_path):
    publish_fake(tmp_path / "s", 3, 0.0)
    with store.open_store(tmp_path / "s") as r:
        assert r.factors() is None
    with pytest.raises(UserError, match="no store"):
        store.open_store(tmp_path / "nope")


def test_reader_keeps_its_version_across_publishes_and_gc(tmp_path):
    link = tmp_path / "s"
    v1 = publish_fake(link, 5, 0.0)
    old = store.open_store(link)  # pinned to v1
    v2 = publish_fake(link, 6, 1000.0)
    v3 = publish_fake(link, 7, 2000.0)  # gc keeps current + previous, and v1 (held by `old`)
    assert old.version_path == v1 and v1.exists() and old.is_stale
    assert old.head_out(5, 0)[0, 0] == 0.0 and old.info["n_images"] == 5
    assert len(old.images()) == 5
    with store.open_store(link) as new:
        assert not new.is_stale
        assert new.version_path == v3 and new.head_out(5, 0)[0, 0] == 2000.0
    old.close()
    v4 = publish_fake(link, 8, 3000.0)  # now v1 and v2 go
    assert not v1.exists() and not v2.exists() and v3.exists() and v4.exists()
    assert os.readlink(link) == os.path.join(f".{link.name}.versions", v4.name)  # relative link
    # a version folder can be opened directly too
    with store.open_store(v3) as r:
        assert r.info["n_images"] == 7


def test_mutate_store_publishes_copy_or_nothing(tmp_path):
    link = tmp_path / "s"
    v1 = publish_fake(link, 4, 0.0)
    reader = store.open_store(link)
    with store.mutate_store(link) as con:
        con.execute(
            "INSERT INTO textspan (layer, head, rank, text, category, bank, run_id) "
            "VALUES (7, 0, 0, 'a red object', 'colour', 'world', 'r')"
        )
    assert reader.version_path == v1 and not reader.interpreted  # old version untouched
    reader.close()
    with store.open_store(link) as r:
        assert r.interpreted and r.version_path != v1
        assert r.query("SELECT text FROM textspan")["text"].tolist() == ["a red object"]
        np.testing.assert_array_equal(r.head_out(5, 1)[:, 0], np.arange(4) + 100)  # zarr shared
        v2 = r.version_path
    with pytest.raises(RuntimeError, match="boom"):
        with store.mutate_store(link) as con:
            con.execute("DELETE FROM textspan")
            raise RuntimeError("boom")
    assert os.path.realpath(link) == str(v2)
    with store.open_store(link) as r:
        assert len(r.query("SELECT * FROM textspan")) == 1
    leftovers = [p.name for p in store.versions_dir(link).iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []
    with pytest.raises(UserError, match="not a store link"):
        with store.mutate_store(v2):
            pass


def test_list_stores(tmp_path):
    publish_fake(tmp_path / "b", 3, 0.0)
    publish_fake(tmp_path / "a", 2, 0.0)
    (tmp_path / "junk").mkdir()
    got = store.list_stores(tmp_path)
    assert [(s.name, s.n_images, s.model_spec, s.interpreted) for s in got] == [
        ("a", 2, "fake", False),
        ("b", 3, "fake", False),
    ]
    assert store.list_stores(tmp_path / "missing") == []


def test_publish_refuses_to_replace_a_real_folder(tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(UserError, match="not a store link"):
        publish_fake(tmp_path / "s", 2, 0.0)
    assert any(
        p.name.startswith(store.STAGING_PREFIX)
        for p in store.versions_dir(tmp_path / "s").iterdir()
    )


def test_gc_removes_only_long_abandoned_staging(tmp_path):
    link = tmp_path / "s"
    old, fresh = store.staging_dir(link, "old"), store.staging_dir(link, "fresh")
    for d in (old, fresh):
        store.save_build_state(d, {"key": d.name})
    week = time.time() - 8 * 24 * 3600
    os.utime(old / store.BUILD_DIR, (week, week))
    publish_fake(link, 2, 0.0)
    assert not old.exists() and fresh.exists()


def test_mutate_store_refuses_a_version_it_did_not_read(tmp_path):
    """Results computed from version V are never written on top of a later version."""
    link = tmp_path / "s"
    v1 = publish_fake(link, 4, 0.0)
    v2 = publish_fake(link, 5, 1.0)  # republished (e.g. rebuilt) after the caller read v1
    with pytest.raises(UserError, match=f"republished while this ran .*{v1.name}.*{v2.name}"):
        with store.mutate_store(link, expect_version=v1) as con:
            con.execute("DELETE FROM images")
    assert os.path.realpath(link) == str(v2)
    with store.open_store(link) as r:
        assert len(r.images()) == 5
    assert not [p for p in store.versions_dir(link).iterdir() if p.name.startswith(".tmp")]
    with store.mutate_store(link, expect_version=v2):  # the version read is current: fine
        pass
    assert os.path.realpath(link) != str(v2)


def test_reader_retries_when_gc_removes_the_version_it_resolved(tmp_path, monkeypatch):
    """A publish + gc between resolving the link and locking the version: open the new one."""
    import shutil

    import engine.store.reader as reader_mod

    link = tmp_path / "s"
    v1 = publish_fake(link, 4, 0.0)
    real = reader_mod.resolve
    raced = []

    def racy(path):
        version = real(path)
        if not raced:  # after resolving: a new version is published and ours is collected
            raced.append(version)
            publish_fake(link, 6, 1.0)
            shutil.rmtree(version)
        return version

    monkeypatch.setattr(reader_mod, "resolve", racy)
    with store.open_store(link) as r:
        assert raced == [v1] and r.version_path != v1 and r.info["n_images"] == 6
    assert not v1.exists()  # the reader created nothing in the collected folder


def test_nested_mutation_of_one_store_is_an_error_not_a_deadlock(tmp_path):
    import signal
    import threading

    def timeout(*_):
        raise TimeoutError("nested mutate_store deadlocked")

    link = tmp_path / "s"
    publish_fake(link, 4, 0.0)
    other = tmp_path / "o"
    publish_fake(other, 3, 0.0)
    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(20)
    try:
        with store.mutate_store(link) as con:
            con.execute("DELETE FROM textspan")
            with pytest.raises(UserError, match="already being modified by this thread"):
                with store.mutate_store(link):
                    pass
            with pytest.raises(UserError, match="already being modified"):
                publish_fake(link, 2, 9.0)
            with store.mutate_store(other):  # another store: fine
                pass
            done = []  # another thread waits for the lock instead of failing

            def other_thread():
                with store.mutate_store(link):
                    done.append(True)

            t = threading.Thread(target=other_thread)
            t.start()
            time.sleep(0.3)
            assert not done and t.is_alive()  # waiting for the outer mutation
        t.join(10)
        assert done == [True]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    with store.mutate_store(link):  # released: usable again in this thread
        pass
