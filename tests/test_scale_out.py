"""Scale-out builds: `--shard I/N` + `--finalise` and `--executor ray` give the single-process
build's store bit for bit (every Zarr array, the same DuckDB rows), with skipped files, killed
workers, a killed driver, and missing or overlapping shards refused with one line."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_imageio import make_bad_files

import engine.store.writer as writer_mod
from engine import store
from engine.cli import main as cli_main
from engine.pipeline.build import BuildParams, build_store
from engine.store import schema

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
N, CHUNK, BATCH = 240, 16, 6  # 15 chunks; batches do not divide chunks
IMAGES = f"synthetic:{N}:5"


def params(link, images=IMAGES, **kw) -> BuildParams:
    kw = {"batch_size": BATCH, "image_chunk": CHUNK, "progress": False, **kw}
    return BuildParams(model="tiny-test", images=images, store=str(link), **kw)


def argv(link, images=IMAGES, chunk=CHUNK, batch=BATCH) -> list[str]:
    return ["build", "--model", "tiny-test", "--images", images, "--store", str(link),
            "--batch-size", str(batch), "--image-chunk", str(chunk), "--no-progress"]  # fmt: skip


def contents(link) -> dict:
    """Every array, and every DuckDB row except what names the run (run id, times, host)."""
    with store.open_store(link) as r:
        out = {name: r.array(name) for name in schema.ARRAYS if r.has_array(name)}
        for table in ("images", "image_factors", "models"):
            out[table] = r.query(f"SELECT * FROM {table} ORDER BY ALL")
        out["skipped_files"] = r.query("SELECT path, reason FROM skipped_files ORDER BY ALL")
        meta = r.query("SELECT key, value FROM store_meta WHERE key NOT IN "
                       "('built_at', 'run_id') ORDER BY key")  # fmt: skip
        out["store_meta"] = meta
        skipped = r.query("SELECT skipped_files FROM runs").iloc[0, 0]
        out["runs.skipped_files"] = sorted(json.dumps(s) for s in json.loads(skipped))
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, x in a.items():
        y = b[k]
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape, k
            assert np.array_equal(x, y), k  # bit for bit
        elif hasattr(x, "equals"):
            assert x.equals(y), k
        else:
            assert x == y, k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    link = tmp_path_factory.mktemp("ref") / "ref"
    res = build_store(params(link))
    assert res.n_images == N
    return contents(link)


def staging_of(link) -> Path | None:
    vdir = store.versions_dir(link)
    found = list(vdir.glob(store.STAGING_PREFIX + "*")) if vdir.is_dir() else []
    return found[0] if found else None


def run_cli(args, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "engine", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


# ---------------------------------------------------------------- --shard / --finalise


@pytest.mark.slow
def test_two_shards_at_once_then_finalise_equal_single_build(tmp_path, reference):
    link = tmp_path / "s"
    cmd = [sys.executable, "-m", "engine", *argv(link)]
    procs = [
        subprocess.Popen(
            cmd + ["--shard", f"{i}/2"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert cli_main([*argv(link), "--finalise"]) == 0  # published already by the last shard
    assert_same(contents(link), reference)
    assert list(store.versions_dir(link).iterdir()) == [Path(os.path.realpath(link))]


def test_missing_shards_refused_overlap_refused_dead_shard_rerun_alone(tmp_path, capsys, reference):
    link = tmp_path / "m"
    res = build_store(params(link), shard=(0, 3))
    assert not res.published and res.chunks_done == 5 and not link.exists()
    capsys.readouterr()
    assert cli_main([*argv(link), "--finalise"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "10 of 15 chunks missing" in err
    assert "chunks 1-2, 4-5, 7-8, 10-11, 13-14" in err and "--shard 1/3, --shard 2/3" in err
    assert cli_main([*argv(link), "--shard", "0/2"]) == 2  # another N overlaps these shards
    assert "overlaps" in capsys.readouterr().err
    assert cli_main([*argv(link), "--shard", "3/3"]) == 2
    assert cli_main([*argv(link), "--shard", "0/3", "--finalise"]) == 2
    build_store(params(link), shard=(2, 3))
    assert cli_main([*argv(link), "--finalize"]) == 2  # (the alias) shard 1 "died"
    assert "chunks 1, 4, 7, 10, 13" in capsys.readouterr().err
    res = build_store(params(link), shard=(1, 3))  # rerun alone: the last shard publishes
    assert res.published and res.chunks_done == 5 and res.n_images == N
    assert_same(contents(link), reference)
    assert build_store(params(link), shard=(1, 3)).up_to_date


def test_shard_resumes_its_own_chunks(tmp_path, reference):
    link = tmp_path / "r"
    with pytest.raises(RuntimeError, match="injected"):
        build_store(params(link), shard=(1, 2), fail_after_chunks=3)
    assert len(store.recorded_chunks(staging_of(link))) == 3
    res = build_store(params(link), shard=(1, 2))
    assert res.resumed_chunks == 3 and res.chunks_done == 4 and not res.published
    assert build_store(params(link), shard=(0, 2)).published
    assert_same(contents(link), reference)


def hostile_folder(root: Path) -> Path:
    """19 good images with hostile files between them, so that chunks lose different counts."""
    imgs = root / "imgs"
    for c in ("a", "b", "c"):
        (imgs / c).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(19):
        arr = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(imgs / "abc"[i % 3] / f"g{i:02d}.png")
    make_bad_files(imgs / "b")
    make_bad_files(imgs / "c")
    return imgs


def test_sharded_build_with_skipped_files_equals_single(tmp_path):
    imgs = hostile_folder(tmp_path)
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    kw = {"images": str(imgs), "image_chunk": 4, "batch_size": 3}
    res = build_store(params(single, **kw))
    assert res.n_images == 19 and res.n_skipped == 8
    for i in (2, 0, 1):
        res = build_store(params(sharded, **kw), shard=(i, 3))
    assert res.published and res.n_images == 19 and res.n_skipped == 8
    a = contents(single)
    assert_same(a, contents(sharded))
    assert a["images"]["image_id"].tolist() == list(range(19))
    assert a["output"].shape[0] == 19


def test_compaction_killed_mid_swap_resumes_identically(tmp_path, monkeypatch):
    imgs = hostile_folder(tmp_path)
    kw = {"images": str(imgs), "image_chunk": 4, "batch_size": 3}
    build_store(params(tmp_path / "ref", **kw))
    link = tmp_path / "c"
    real_rename = os.rename

    def dies_on_second_rename(src, dst):
        if Path(src).parent.name == writer_mod.COMPACT_DIR:  # compacted copy -> contrib.zarr
            raise OSError("killed between the renames")
        real_rename(src, dst)

    monkeypatch.setattr(writer_mod.os, "rename", dies_on_second_rename)
    with pytest.raises(OSError, match="between the renames"):
        build_store(params(link, **kw))
    monkeypatch.setattr(writer_mod.os, "rename", real_rename)
    assert (staging_of(link) / writer_mod.SPARSE_ZARR).is_dir()
    res = build_store(params(link, **kw))  # nothing left to compute: finishes the swap
    assert res.resumed_chunks == res.timings["chunks"] and res.n_images == 19
    assert_same(contents(link), contents(tmp_path / "ref"))


# ---------------------------------------------------------------- --executor ray

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="the distributed extra is not installed"
)


def ray_cmd(link) -> list[str]:
    return [sys.executable, "-m", "engine", *argv(link), "--executor", "ray", "--num-workers", "2"]


def wait_for_records(link, proc, n: int, timeout: float = 180) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        stag = staging_of(link)
        recs = store.load_chunk_records(stag) if stag else []
        if len(recs) >= n:
            return recs
        time.sleep(0.005)
    raise AssertionError(f"no {n} chunk records; rc={proc.poll()}")


@pytest.mark.slow
@pytest.mark.distributed
@needs_ray
def test_ray_build_equals_single_build(tmp_path, reference):
    link = tmp_path / "ray"
    out = run_cli(ray_cmd(link)[3:])
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{N} images, 0 skipped" in out.stdout
    assert_same(contents(link), reference)
    with store.open_store(link) as r:
        timings = json.loads(r.query("SELECT timings FROM runs").iloc[0, 0])
    assert timings["executor"] == "ray:2" and timings["chunks"] == N // CHUNK


@pytest.mark.slow
@pytest.mark.distributed
@needs_ray
def test_ray_worker_killed_mid_build_completes_identically(tmp_path, reference):
    link = tmp_path / "wk"
    proc = subprocess.Popen(ray_cmd(link), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        recs = wait_for_records(link, proc, 1)
        victim = recs[0]["pid"]
        assert victim != proc.pid
        os.kill(victim, signal.SIGKILL)  # a Ray worker process, mid-build
        assert len(recs) < N // CHUNK
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert_same(contents(link), reference)


@pytest.mark.slow
@pytest.mark.distributed
@needs_ray
def test_ray_driver_killed_rerun_resumes(tmp_path, reference):
    link = tmp_path / "dk"
    proc = subprocess.Popen(ray_cmd(link), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    try:
        wait_for_records(link, proc, 2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local cluster it started
        proc.wait()
    assert not link.exists()
    done = len(store.recorded_chunks(staging_of(link)))
    out = run_cli(ray_cmd(link)[3:])
    assert out.returncode == 0, out.stderr[-3000:]
    resumed = re.search(r"resumed after (\d+) chunks", out.stdout)
    assert resumed and int(resumed[1]) >= done >= 2, out.stdout
    assert_same(contents(link), reference)


@pytest.mark.distributed
def test_ray_missing_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    assert cli_main([*argv(tmp_path / "x"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "pip install" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.unit
def test_a_worker_failure_reaches_the_cli_as_one_line():
    ray = pytest.importorskip("ray")
    from engine.errors import UserError
    from engine.pipeline.distributed import worker_error

    own = ray.exceptions.RayTaskError(
        "run", "Traceback ...", UserError("reconstruction off by 3e-2")
    )
    assert str(worker_error(own)) == "reconstruction off by 3e-2"
    other = ray.exceptions.RayTaskError("run", "Traceback ...", MemoryError("out of memory\nat x"))
    msg = str(worker_error(other))
    assert msg.startswith("a Ray worker failed (at x)") and "resume" in msg and "\n" not in msg
    died = ray.exceptions.RayActorError()
    assert "\n" not in str(worker_error(died)) and "rerun" in str(worker_error(died))


@pytest.mark.distributed
def test_ray_workers_use_the_drivers_thread_count_unless_told(monkeypatch):
    """Equal thread counts keep Ray builds bit-identical to single builds on CPUs whose matmul
    reduction order follows the thread count; a bad count is one line before Ray starts."""
    import torch

    from engine.errors import UserError
    from engine.pipeline.distributed import RayOptions, build_with_ray, worker_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert worker_threads(RayOptions()) == 3
    assert worker_threads(RayOptions(threads_per_worker=1)) == 1
    with pytest.raises(UserError, match="--threads-per-worker 0"):
        worker_threads(RayOptions(threads_per_worker=0))
    with pytest.raises(UserError, match="--threads-per-worker 0"):  # before Ray starts
        build_with_ray(params("/nonexistent/x"), RayOptions(threads_per_worker=0))
