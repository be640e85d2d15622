"""Store: schema round trips, atomic publication, readers pinned to their version, mutation."""

from __future__ import annotations

import json
import os
import time

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import store
from engine.errors import UserError
from engine.store import schema

pytestmark = pytest.mark.unit

LAYERS = [5, 7]
SIZES = schema.array_sizes(0, 8, LAYERS, n_heads=3, d_head=4, d_embed=8, image_chunk=4)


FAKE_MODEL = schema.ModelRecord(
    model_spec="fake", arch="fake", weights_hash="random:seed0", random_weights=True,
    tokenizer="fake", n_layers=8, n_heads=3, d_model=12, d_head=4, d_embed=8, image_size=32, patch_size=8, grid=4,
)  # fmt: skip


def fake_meta(**changes) -> schema.StoreMeta:
    fields = dict(
        schema_version=schema.SCHEMA_VERSION, layers=tuple(LAYERS), image_chunk=4, thumb_size=64,
        images_source="test", built_at="2026-01-01 00:00:00", run_id="r", code_version="t",
        build_key=None, factors=("colour", "shape"), image_set_hash=None, n_skipped=0,
        reconstruction_error=None, reconstruction_tolerance=None, random_data=True,
        pooling="class_token", d_coord=4, basis_shared=False,
    )  # fmt: skip
    return schema.StoreMeta(**{**fields, **changes})


def publish_fake(link, n_images: int, fill: float, factors: bool = False, meta_extra=None):
    """Publish a store with known values: coord[i, l, h, 0] = fill + i + 10 l + 100 h (other
    coordinates 0), basis[l, h] = the first 4 unit vectors, so head_out[.., 0] = coord[.., 0]."""
    staging = store.staging_dir(link, f"test{fill}")
    staging.mkdir(parents=True)
    sizes = {**SIZES, "image": n_images + 3}  # created larger, shrunk like a build does
    arrays = store.create_arrays(staging, sizes)
    i, l, h = np.meshgrid(np.arange(n_images), np.arange(2), np.arange(3), indexing="ij")
    coord = np.zeros((n_images, 2, 3, 4), np.float16)
    coord[..., 0] = fill + i + 10 * l + 100 * h
    data = {
        "coord": coord,
        "output": np.full((n_images, 8), fill, np.float32),
        "std": np.ones(n_images, np.float32),
        "thumbnail": np.arange(n_images, dtype=np.uint8)[:, None, None, None]
        * np.ones((1, 64, 64, 3), np.uint8),
    }
    store.write_rows(arrays, 0, data)
    store.write_constants(
        arrays, {"basis": np.broadcast_to(np.eye(4, 8, dtype=np.float32), (2, 3, 4, 8))}
    )
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
    meta = fake_meta(**(meta_extra or {}))
    store.write_database(staging, tables, meta, FAKE_MODEL)
    return store.publish(link, staging)


def test_schema_round_trip(tmp_path):
    arrays = store.create_arrays(tmp_path, {**SIZES, "image": 10})
    # a class-token store holds every array but the pooled-only ones
    assert set(arrays) == {n for n, spec in schema.ARRAYS.items() if not spec.pooled_only}
    for name in arrays:
        spec = schema.ARRAYS[name]
        a = arrays[name]
        assert a.metadata.dimension_names == spec.dims
        assert a.dtype == np.dtype(spec.dtype)
        assert a.shape == spec.shape({**SIZES, "image": 10})
    head = arrays["coord"]
    assert head.chunks == (4, 1, 1, 4)  # one (layer, head) per inner chunk
    assert head.shards == (4, 2, 3, 4)  # one shard per image chunk
    assert arrays["basis"].shape == (2, 3, 4, 8) and arrays["mlp"].shape == (10, 8, 8)
    assert arrays["attn_rest"].shape == (10, 6, 8) and arrays["attn_bias"].shape == (2, 8)
    assert arrays["thumbnail"].chunks == (1, 64, 64, 3)  # one thumbnail per inner chunk
    assert arrays["thumbnail"].shards == (4, 64, 64, 3)
    store.write_database(tmp_path, {}, fake_meta(), FAKE_MODEL)
    con = duckdb.connect(str(tmp_path / schema.STORE_DB), read_only=True)
    tables = {
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    assert tables == set(schema.TABLES)
    cols = [r[0] for r in con.execute("DESCRIBE images").fetchall()]
    assert cols == ["image_id", "path", "sha256", "width", "height", "class"]
    rows = dict(con.execute("SELECT key, value FROM store_meta").fetchall())
    assert schema.StoreMeta.from_rows(rows) == fake_meta()  # the typed record round-trips
    assert json.loads(rows["layers"]) == LAYERS
    assert json.loads(rows["meta_version"]) == schema.META_VERSION
    con.close()


def vit_sizes(n_layers, n_stored, n_heads, d_embed, n_images=10**6, d_head=64):
    layers = list(range(n_layers - n_stored, n_layers))
    return schema.array_sizes(n_images, n_layers, layers, n_heads, d_head, d_embed, 1)


def test_bytes_per_image_of_the_compact_store():
    """The issue's targets: ViT-B-32 last 4 layers' heads <= 6.5 KB, ViT-L-14 <= 8.5 KB, the
    complete ViT-B-32 decomposition (everything but the thumbnail) <= 30 KB."""
    b32, l14 = vit_sizes(12, 4, 12, 512), vit_sizes(24, 4, 16, 768)
    assert schema.bytes_per_image(b32, ["coord"]) == 6144  # vs 49,152 as head_out [.., 512]
    assert schema.bytes_per_image(l14, ["coord"]) == 8192  # vs 98,304
    complete = [n for n in schema.ARRAYS if n != "thumbnail"]
    assert schema.bytes_per_image(b32, complete) == 6144 + 12 * 1024 + 8 * 1024 + 1024 + 4 + 2048
    assert schema.bytes_per_image(b32, complete) <= 30_000


@given(
    n_layers=st.integers(1, 32),
    heads=st.integers(1, 16),
    d_head=st.sampled_from([4, 16, 64, 128]),
    n_images=st.integers(1, 3_000_000),
)
def test_image_chunk_bounds(n_layers, heads, d_head, n_images):
    """A chunk fits the budget (or is one image), never exceeds the collection, and is a power
    of two unless it is the whole (small) collection."""
    sizes = vit_sizes(n_layers, min(4, n_layers), heads, heads * d_head // 2, n_images, d_head)
    c = schema.image_chunk_for(sizes, n_images)
    assert 1 <= c <= min(n_images, schema.MAX_IMAGE_CHUNK)
    assert c == 1 or c * schema.bytes_per_image(sizes) <= schema.CHUNK_BUDGET
    assert c & (c - 1) == 0 or c == n_images


def test_image_chunk_examples():
    assert schema.image_chunk_for(vit_sizes(12, 4, 12, 512), 10**6) == 1024
    assert schema.image_chunk_for(vit_sizes(12, 4, 12, 512), 64) == 64  # not padded to 1,024
    assert schema.image_chunk_for(vit_sizes(12, 4, 12, 512), 5000) == 1024


def test_reader_reads_what_was_written(tmp_path):
    link = tmp_path / "s"
    publish_fake(link, 10, 0.0, factors=True)
    with store.open_store(link) as r:
        assert r.info["n_images"] == 10 and r.layers == LAYERS
        c = r.coords(7, 2)  # absolute layer 7 = stored index 1
        assert c.dtype == np.float32 and c.shape == (10, 4)
        np.testing.assert_array_equal(c[:, 0], np.arange(10) + 10 + 200)
        assert r.coords(7, 2) is c  # cached
        assert r.coords(7, 2, cache=False) is not c
        assert r.basis(7, 2).shape == (4, 8)
        h = r.head_out(7, 2)
        assert h.shape == (10, 8) and np.array_equal(h[:, 0], c[:, 0])
        assert r.coord_array.shape == (10, 2, 3, 4)
        assert r.layers == LAYERS and r.rest_layers == [0, 1, 2, 3, 4, 6]
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
    assert old.coords(5, 0)[0, 0] == 0.0 and old.info["n_images"] == 5
    assert len(old.images()) == 5
    with store.open_store(link) as new:
        assert not new.is_stale
        assert new.version_path == v3 and new.coords(5, 0)[0, 0] == 2000.0
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
    with store.mutate_store(link) as w:
        w.append("textspan", pd.DataFrame([{"layer": 7, "head": 0, "rank": 0,
                 "text": "a red object", "category": "colour", "bank": "world", "run_id": "r"}]))  # fmt: skip
    assert reader.version_path == v1 and not reader.interpreted  # old version untouched
    reader.close()
    with store.open_store(link) as r:
        assert r.interpreted and r.version_path != v1
        assert r.query("SELECT text FROM textspan")["text"].tolist() == ["a red object"]
        np.testing.assert_array_equal(r.coords(5, 1)[:, 0], np.arange(4) + 100)  # zarr shared
        v2 = r.version_path
    with pytest.raises(RuntimeError, match="boom"):
        with store.mutate_store(link) as w:
            w.delete("textspan")
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
        with store.mutate_store(link, expect_version=v1) as w:
            w.delete("images")
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
        with store.mutate_store(link) as w:
            w.delete("textspan")
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


def test_a_store_of_the_old_format_is_refused_with_the_rebuild_command(tmp_path):
    link = tmp_path / "photos"
    publish_fake(link, 3, 0.0, meta_extra={"schema_version": 1})
    with store.mutate_store(link) as w:
        params = {"images": "/data/photos", "layers_arg": "4", "random_weights": False}
        w.append("runs", pd.DataFrame([{"run_id": "r", "kind": "build",
                                        "parameters": json.dumps(params)}]))  # fmt: skip
    with pytest.raises(UserError) as e:
        store.open_store(link)
    msg = str(e.value)
    assert "\n" not in msg and "format 1" in msg and "format 2" in msg
    assert msg.endswith(
        f"python -m engine build --model fake --images /data/photos --layers 4 --store {link}"
    )
    publish_fake(tmp_path / "demo", 3, 0.0, meta_extra={"schema_version": 1})
    with pytest.raises(UserError, match="python -m engine demo-store --store"):
        store.open_store(tmp_path / "demo")
    assert store.list_stores(tmp_path) == []  # listing skips what cannot be read


def test_reader_cache_stays_within_its_byte_budget(tmp_path):
    publish_fake(tmp_path / "s", 10, 0.0)
    one = 10 * 4 * 4  # one head's float32 coordinates
    with store.open_store(tmp_path / "s", cache_bytes=2 * one) as r:
        a = r.coords(5, 0)
        r.coords(5, 1)
        assert r.coords(5, 0) is a and len(r.cache) == 2  # hit: (5, 0) is now the newest
        r.coords(5, 2)  # evicts the least recently used, (5, 1)
        assert len(r.cache) == 2 and r.cache.used <= 2 * one and r.cache.evictions == 1
        assert ("coord", 5, 0) in r.cache and ("coord", 5, 1) not in r.cache
        for h in range(3):
            for lay in LAYERS:
                r.coords(lay, h)
                assert r.cache.used <= 2 * one
        cache = r.cache
    assert len(cache) == 0  # closing the reader frees what it cached
    with store.open_store(tmp_path / "s", cache_bytes=one - 1) as r:
        r.coords(5, 0)
        assert len(r.cache) == 0  # larger than the budget: returned, never kept


@settings(max_examples=50, deadline=None)
@given(
    budget=st.integers(0, 400),
    ops=st.lists(st.tuples(st.integers(0, 9), st.integers(1, 200)), max_size=60),
)
def test_byte_budget_cache_never_exceeds_its_budget(budget, ops):
    from engine.store.cache import ByteBudgetCache

    c = ByteBudgetCache(budget)
    for key, size in ops:
        v = c.get(key, lambda size=size: np.zeros(size, np.uint8))
        assert c.used <= budget and c.used == sum(c._items[k][1] for k in c._items)
        if size <= budget and key in c:
            assert c.get(key, lambda: None) is v
