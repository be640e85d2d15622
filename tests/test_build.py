"""Build: kill-and-resume is bit-exact, readers survive rebuilds, bad files are listed, bad input
is one line with exit code 2. Uses the registry's `tiny-test` model (a small random ViT)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_imageio import make_bad_files

import engine.pipeline.build_plan as plan_mod
import engine.pipeline.compute as compute_mod
from engine import store
from engine.cli import main as cli_main
from engine.model import load_model
from engine.pipeline.build import BuildParams, build_store
from engine.pipeline.rows import ReconstructionError
from engine.store import schema

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
N, CHUNK, BATCH = 200, 64, 24  # 4 chunks; batches do not divide chunks


def params(store_path, images=f"synthetic:{N}:3", **kw) -> BuildParams:
    kw = {"batch_size": BATCH, "image_chunk": CHUNK, "progress": False, **kw}
    return BuildParams(model="tiny-test", images=images, store=str(store_path), **kw)


def arrays_of(path) -> dict[str, np.ndarray]:
    with store.open_store(path) as r:
        out = {name: r.array(name) for name in schema.ARRAYS if r.has_array(name)}
        out["images"] = r.images().to_numpy()
        out["factors"] = r.factors()[1]
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), k  # bit-exact


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted build of the test collection."""
    root = tmp_path_factory.mktemp("ref")
    res = build_store(params(root / "ref"))
    assert res.n_images == N and not res.up_to_date and res.resumed_chunks == 0
    return root / "ref"


def test_build_contents_match_the_model(reference):
    """Stored rows are the model's own numbers: output = encode_image, heads within fp16."""
    from engine.model import decompose_images
    from engine.sources import world

    lm = load_model("tiny-test")
    with store.open_store(reference) as r:
        info = r.info
        assert info["layers"] == list(range(lm.dims.n_layers))  # default 4 > 3 layers: all
        assert info["image_chunk"] == CHUNK and info["n_images"] == N
        assert info["code_version"].startswith("0.") and info["weights_hash"] == lm.weights_hash
        idx = [0, 77, 199]
        batch = world.generate(0, N, 3)
        pixels = torch.stack([lm.preprocess(Image.fromarray(batch.images[i])) for i in idx])
        with torch.no_grad():
            enc = lm.model.encode_image(pixels).numpy()
        np.testing.assert_allclose(r.output()[idx], enc, rtol=1e-4, atol=1e-5)
        dec = decompose_images(lm, pixels, info["layers"])
        coord = r.coord_array.get_orthogonal_selection((idx,)).astype(np.float32)
        np.testing.assert_allclose(coord, dec.coord.numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_array_equal(r.array("basis"), dec.basis.numpy())
        for name in ("mlp", "attn_rest", "embed"):
            got = r.lazy(name).get_orthogonal_selection((idx,)).astype(np.float32)
            np.testing.assert_allclose(got, getattr(dec, name).numpy(), rtol=2e-3, atol=2e-3)
        # std is what it says: ln_post's statistic of the final residual (the model's own)
        with torch.no_grad():
            x = lm.model.visual
            resid = {}
            h = x.ln_post.register_forward_pre_hook(lambda m, i: resid.setdefault("r", i[0]))
            lm.model.encode_image(pixels)
            h.remove()
        cls = resid["r"] if resid["r"].dim() == 2 else resid["r"][:, 0]  # class-token row
        want = (cls.var(dim=-1, unbiased=False) + x.ln_post.eps).sqrt()
        np.testing.assert_allclose(r.std()[idx], want.numpy(), rtol=1e-5)
        assert "resid_norm" not in schema.ARRAYS and "ln_scale" not in schema.ARRAYS
        assert info["rest_layers"] == [] and r.rest_layers == []
        assert info["reconstruction_error"] < 1e-5
        names, codes = r.factors()
        assert names == list(world.FACTORS) and np.array_equal(codes, batch.codes)
        imgs = r.images()
        assert imgs["path"].tolist()[:2] == ["synthetic:3/0", "synthetic:3/1"]
        run = r.query("SELECT * FROM runs").iloc[0]
        assert run["kind"] == "build" and run["model_spec"] == "tiny-test"
        assert json.loads(run["parameters"])["batch_size"] == BATCH
        assert json.loads(run["skipped_files"]) == []
        assert run["image_set_hash"] == info["image_set_hash"]


def test_rerun_is_up_to_date(reference):
    res = build_store(params(reference))
    assert res.up_to_date and res.n_images == N


def test_resume_after_failure_is_bit_exact(tmp_path, reference):
    link = tmp_path / "s"
    with pytest.raises(RuntimeError, match="injected"):
        build_store(params(link), fail_after_chunks=2)
    assert not link.exists()  # nothing published
    staging = [p for p in store.versions_dir(link).iterdir()]
    assert len(staging) == 1 and len(store.load_chunk_records(staging[0])) == 2
    res = build_store(params(link))
    assert res.resumed_chunks == 2 and res.n_images == N
    assert_same(arrays_of(link), arrays_of(reference))
    assert list(store.versions_dir(link).iterdir()) == [res.version]  # staging consumed


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(tmp_path, reference):
    link = tmp_path / "k"
    cmd = [sys.executable, "-m", "engine", "build", "--model", "tiny-test"]
    cmd += ["--images", f"synthetic:{N}:3", "--store", str(link), "--no-progress"]
    cmd += ["--batch-size", str(BATCH), "--image-chunk", str(CHUNK)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        vdir = store.versions_dir(link)
        stag = list(vdir.glob(store.STAGING_PREFIX + "*")) if vdir.is_dir() else []
        done = len(store.load_chunk_records(stag[0])) if stag else 0
        if done >= 1:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= done < N // CHUNK + 1, proc.stderr.read().decode()[-2000:]
    assert not link.exists()
    assert cli_main(cmd[3:]) == 0  # the same command, in process: resumes
    assert_same(arrays_of(link), arrays_of(reference))


@pytest.mark.slow
def test_reader_survives_rebuild_and_other_builds(tmp_path):
    """Another process holds store A open; rebuilding A and building B both succeed."""
    a, b = tmp_path / "a", tmp_path / "b"
    build_store(params(a, images="synthetic:40:1", image_chunk=16))
    script = (
        "import sys, numpy as np\n"
        "from engine import store\n"
        f"r = store.open_store({str(a)!r})\n"
        "x = r.head_out(r.layers[-1], 0).copy(); n = len(r.images())\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
        "y = r.coord_array[:, -1, 0, :].astype(np.float32) @ r.basis(r.layers[-1], 0)\n"
        "print('same' if np.array_equal(x, y) and len(r.images()) == n == 40 else 'changed')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        old_version = os.path.realpath(a)
        build_store(params(b, images="synthetic:30:2", image_chunk=16))  # another store
        build_store(params(a, images="synthetic:50:1", image_chunk=16))  # rebuild A: swaps in
        build_store(params(a, images="synthetic:60:1", image_chunk=16))  # and again (gc runs)
        assert Path(old_version).exists()  # held by the reader, not collected
        out, _ = proc.communicate("go\n", timeout=60)
        assert out.strip() == "same"
    finally:
        proc.kill()
    with store.open_store(a) as r:
        assert r.info["n_images"] == 60
    with store.open_store(b) as r:
        assert r.info["n_images"] == 30


def test_folder_build_skips_bad_files(tmp_path):
    imgs = tmp_path / "imgs"
    (imgs / "red").mkdir(parents=True)
    (imgs / "blue").mkdir()
    bad = make_bad_files(imgs)
    for i in range(3):
        Image.new("RGB", (40 + i, 30), (200, 10, 10)).save(imgs / "red" / f"r{i}.png")
        Image.new("RGBA", (30, 30), (10, 10, 200, 128)).save(imgs / "blue" / f"b{i}.png")
    Image.new("CMYK", (20, 20)).save(imgs / "cmyk.jpg")
    Image.fromarray(np.full((12, 16), 40000, np.uint16)).save(imgs / "g16.png")  # 16-bit grey
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: stored 40x20, shown 20x40
    Image.new("RGB", (40, 20), (0, 200, 0)).save(imgs / "rot.jpg", exif=exif.tobytes())
    frames = [Image.new("RGB", (8, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(imgs / "anim.gif", save_all=True, append_images=frames[1:])
    res = build_store(params(tmp_path / "s", images=str(imgs), image_chunk=4, batch_size=3))
    assert res.n_images == 10 and res.n_skipped == len(bad)
    with store.open_store(tmp_path / "s") as r:
        df = r.images()
        good = [f"blue/b{i}.png" for i in range(3)] + ["cmyk.jpg", "anim.gif", "g16.png"]
        good += [f"red/r{i}.png" for i in range(3)] + ["rot.jpg"]
        assert df["path"].tolist() == sorted(good)
        by_path = df.set_index("path")
        assert by_path.loc["blue/b0.png", "class"] == "blue"
        assert by_path.loc["g16.png", "class"] is None
        assert by_path.loc["rot.jpg", ["width", "height"]].tolist() == [20, 40]
        assert by_path.loc["anim.gif", ["width", "height"]].tolist() == [8, 6]
        assert [by_path.loc[f"red/r{i}.png", "width"] for i in range(3)] == [40, 41, 42]
        skipped = r.query("SELECT path, reason FROM skipped_files ORDER BY path")
        assert sorted(skipped["path"]) == sorted(bad)
        for path, reason in skipped.itertuples(index=False):
            assert bad[path] in reason
        run = r.query("SELECT skipped_files FROM runs").iloc[0, 0]
        assert sorted(s["path"] for s in json.loads(run)) == sorted(bad)
        assert r.factors() is None
        red = int(np.flatnonzero(df["path"] == "red/r0.png")[0])
        thumbs = r.thumbnails([red])  # 40x30, letterboxed
        assert thumbs[0, 32, 32, 0] > 150 and thumbs[0, 0, 32].tolist() == [0, 0, 0]
        anim = int(np.flatnonzero(df["path"] == "anim.gif")[0])
        assert r.thumbnails([anim])[0, 32, 32].tolist() == [255, 0, 0]  # first frame


@pytest.mark.parametrize(
    "args, message",
    [
        (["--images", "{tmp}/missing"], "does not exist"),
        (["--images", "{tmp}/empty"], "no image files"),
        (["--images", "{tmp}/bad_only"], "no usable images"),
        (["--images", "synthetic:abc"], "synthetic:N"),
        (["--images", "synthetic:0"], "synthetic:N"),
        (["--layers", "9"], "has 3 layers"),
        (["--layers", "last"], "bad --layers"),
        (["--layers", "0,7"], "bad --layers"),
        (["--model", "no-such-model/xyz"], ""),
        (["--batch-size", "0"], "batch-size"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad_only").mkdir()
    (tmp_path / "bad_only" / "x.png").write_bytes(b"nope")
    opts = {"--model": "tiny-test", "--images": "synthetic:8", "--store": str(tmp_path / "s")}
    opts.update({args[i]: args[i + 1].format(tmp=tmp_path) for i in range(0, len(args), 2)})
    argv = ["build", "--no-progress", *[x for kv in opts.items() for x in kv]]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err
    assert not (tmp_path / "s").exists()


def test_kill_after_finish_before_publish_publishes_without_recompute(
    tmp_path, monkeypatch, reference
):
    link = tmp_path / "p"
    real_publish = store.publish_locked

    def killed(*a, **k):
        raise RuntimeError("killed before publication")

    monkeypatch.setattr(store, "publish_locked", killed)
    with pytest.raises(RuntimeError, match="before publication"):
        build_store(params(link))
    assert not link.exists()
    monkeypatch.setattr(store, "publish_locked", real_publish)

    def no_compute(*a, **k):
        raise AssertionError("recomputed a finished build")

    monkeypatch.setattr(compute_mod, "compute_batch", no_compute)
    res = build_store(params(link))
    assert res.n_images == N
    assert_same(arrays_of(link), arrays_of(reference))


def test_demo_store_builds_once_then_interprets(tmp_path, monkeypatch, capsys):
    import engine.pipeline.interpret

    calls = []

    def fake_interpretation(store_path, labeller, bank):
        calls.append((str(store_path), labeller, bank))
        with store.mutate_store(store_path) as w:
            w.append("head_labels", pd.DataFrame([{"layer": 0, "head": 0, "label": "x"}]))

    monkeypatch.setattr(engine.pipeline.interpret, "run_interpretation", fake_interpretation)
    link = tmp_path / "demo"
    argv = ["demo-store", "--store", str(link), "--images", "40", "--model", "tiny-test"]
    argv += ["--no-progress"]
    assert cli_main(argv) == 0
    assert calls == [(str(link), "offline", "world")]
    with store.open_store(link) as r:
        assert r.info["n_images"] == 40 and r.interpreted and r.factors() is not None
    capsys.readouterr()
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "exists and is complete" in out and len(calls) == 1


def test_build_stops_before_storing_a_wrong_decomposition(tmp_path, monkeypatch):
    """A block computing what the decomposition does not model (here: one layer's attention
    output scaled, as open_clip's `head_scale` would) stops the build: nothing is published."""
    real = plan_mod.load_model

    def scaled(*a, **k):
        lm = real(*a, **k)
        lm.model.visual.transformer.resblocks[1].attn.register_forward_hook(
            lambda m, i, o: (o[0] * 1.5, *o[1:]) if isinstance(o, tuple) else o * 1.5
        )
        return lm

    monkeypatch.setattr(plan_mod, "load_model", scaled)
    link = tmp_path / "bad"
    with pytest.raises(ReconstructionError, match="does not reproduce encode_image"):
        build_store(params(link, images="synthetic:16:0", image_chunk=8, batch_size=8))
    assert not link.exists()
    staging = list(store.versions_dir(link).glob("staging-*"))
    assert staging and not list(store.iter_chunk_records(staging[0]))  # no chunk recorded


def test_small_collection_is_one_chunk_of_its_size(tmp_path):
    """40 images are one 40-image chunk, not padded to a power of two or 1,024 images."""
    res = build_store(params(tmp_path / "s", images="synthetic:40:0", image_chunk=None))
    with store.open_store(res.store) as r:
        assert r.info["image_chunk"] == 40
        assert r.coord_array.shards[0] == 40
        sizes = schema.array_sizes(40, 3, r.layers, r.n_heads, 16, 32, 40)
    zarr_dir = Path(os.path.realpath(res.store)) / schema.STORE_ZARR
    on_disk = sum(p.stat().st_size for p in zarr_dir.rglob("*") if p.is_file())
    raw = schema.bytes_per_image(sizes) * 40 + 64 * 1024  # + constants and metadata
    assert on_disk <= raw


def test_verify_store_bounds_the_stored_sum(reference, tmp_path, capsys):
    assert cli_main(["verify", "--store", str(reference), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["n_images"] == N
    assert 0 < out["worst_error_over_bound"] <= 1.0
    assert out["relative_error"] < 1e-3  # fp16 rounding of the terms
    # a stored term off by more than fp16 rounding is caught, and named by its image
    import shutil

    import zarr

    shutil.copytree(os.path.realpath(reference), tmp_path / "v", symlinks=True)
    link = tmp_path / "v"  # a version folder opens like a store

    g = zarr.open_group(str(tmp_path / "v" / schema.STORE_ZARR), mode="r+")
    mlp = g["mlp"][77]
    mlp[0, 0] += np.float16(0.05) * np.abs(mlp).max()
    g["mlp"][77] = mlp
    assert cli_main(["verify", "--store", str(link), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and out["worst_image"] == 77
    assert cli_main(["verify"]) == 2  # neither --model nor --store: one line, exit 2
    assert "exactly one of" in capsys.readouterr().err


def test_an_old_format_demo_store_is_rebuilt_by_the_readme_command(tmp_path, monkeypatch):
    """`make demo` runs `python -m engine demo-store`: a store of the previous format in its place
    is refused by readers and simply rebuilt (then interpreted) by that command."""
    from test_store import publish_fake

    import engine.pipeline.interpret
    from engine.errors import UserError

    link = tmp_path / "demo"
    publish_fake(link, 3, 0.0, meta_extra={"schema_version": 1})
    with pytest.raises(UserError, match="demo-store"):
        store.open_store(link)
    calls = []
    monkeypatch.setattr(
        engine.pipeline.interpret, "run_interpretation", lambda *a, **k: calls.append(a)
    )
    argv = ["demo-store", "--store", str(link), "--images", "12", "--model", "tiny-test"]
    assert cli_main([*argv, "--no-progress"]) == 0
    with store.open_store(link) as r:
        assert r.info["schema_version"] == schema.SCHEMA_VERSION and r.info["n_images"] == 12
    assert calls
