"""interpret --neurons at ViT-B-32 scale: 3,072 neurons x 50,000 images, one neuron layer.

Runs `engine.pipeline.neuron_interpret.describe_layer` (both streamed passes, top-100 images,
directions through the frames, OMP over a 3,637-text bank, offline labels from the response
(`engine.core.neuron_labels`: a third read, of about 4,096 images and their embeddings
`output`)) on int8 coordinates
[image, K, neuron] + fp16 scales and random frame constants of ViT-B-32's shapes (K = 12: layer
10; 36: layer 8), from one of two sources:

- `memory`: one stored-format chunk held in RAM, served again for every image range (no reads);
- `zarr`: real arrays written once with the store's schema (`store.create_arrays`: the layout a
  build writes) under --root, read by the real `StoredNeurons` (each chunk read twice, once per
  pass). `zarr-cold` first drops the arrays' files from the page cache (posix_fadvise).

Each measurement is a fresh subprocess; `--baseline REV` also runs the engine of git revision REV
(`git archive`) on the memory source, alternating new / baseline `--repeat` times (medians).
Reported per run: wall and CPU seconds at the default torch threads, the load average before and
after, and the wall seconds spent in reads (`sn.q`), SVD, directions and OMP (the rest: the passes'
arithmetic and labels).

    .venv/bin/python benchmarks/bench_neuron_interpret.py [--images 50000] [--paths 12]
        [--baseline REV] [--repeat 2] [--sources memory,zarr,zarr-cold] [--root /tmp/DIR]
Prints JSON and writes benchmarks/results/neuron_interpret_K{paths}.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ENGINE_ROOT = Path(os.environ.get("BENCH_ENGINE_ROOT", ROOT))  # the baseline's engine, if set
sys.path.insert(0, str(ENGINE_ROOT))

DIMS = {"n_layers": 12, "n_heads": 12, "d_head": 64, "d_embed": 512}  # ViT-B-32


def layer_for(k: int) -> int:
    return DIMS["n_layers"] - 1 - k // DIMS["n_heads"]


def chunk_data(rng, chunk, k, n_neurons):
    """One stored-format chunk: heavy-tailed k (lognormal per image and neuron) quantised."""
    from engine.core import second_order as so

    scale = rng.lognormal(0, 1, (chunk, n_neurons, 1)).astype(np.float32)
    return so.quantise(rng.standard_normal((chunk, n_neurons, k), dtype=np.float32) * scale)


def embeddings(rng, chunk):
    """One chunk of image embeddings `[image, d_embed]` (what the labels read beside q)."""
    return rng.standard_normal((chunk, DIMS["d_embed"]), dtype=np.float32)


def constants(rng, k, n_neurons):
    """neuron_u [K, neuron, d_head], neuron_basis [later, head, d_head, d_embed],
    neuron_chol [1, neuron, K, K] of one neuron layer."""
    later = k // DIMS["n_heads"]
    tri = np.tril(rng.standard_normal((k, k), dtype=np.float32)) * 0.1 + np.eye(k)
    return {
        "neuron_u": rng.standard_normal((k, n_neurons, DIMS["d_head"]), dtype=np.float32),
        "neuron_basis": rng.standard_normal(
            (later, DIMS["n_heads"], DIMS["d_head"], DIMS["d_embed"]), dtype=np.float32
        ),
        "neuron_chol": np.ascontiguousarray(np.broadcast_to(tri, (1, n_neurons, k, k))),
    }


class ArrayReader:
    """The parts of `StoreReader` that `StoredNeurons` uses, over Zarr arrays or in-memory
    stand-ins."""

    def __init__(self, arrays: dict, info: dict, path: str):
        self.arrays, self.info, self.path = arrays, info, path

    def lazy(self, name):
        return self.arrays[name]

    def array(self, name):
        return np.asarray(self.arrays[name][...])


def rows_of(block: np.ndarray, a: int, m: int, roll: bool) -> np.ndarray:
    """Rows a..a+m of the collection made of `block` repeated, rolled along its last axis by a
    different shift per chunk when `roll` (the scales: so that every chunk's norms differ and
    images keep entering the running tops, as on real data)."""
    out = block[:m]
    return np.roll(out, (a // len(block)) * 7919 % block.shape[-1], axis=-1) if roll else out


class Repeated:
    """A stand-in array [image, ...] serving `rows_of(block)` for every image range."""

    def __init__(self, block: np.ndarray, n: int, roll: bool):
        self.block, self.roll, self.shape = block, roll, (n, *block.shape[1:])

    def __getitem__(self, key):
        rows, *rest = key if isinstance(key, tuple) else (key,)
        m = min(rows.stop, self.shape[0]) - rows.start
        return rows_of(self.block, rows.start, m, self.roll)[(slice(None), *rest)]


def info(n, chunk, k):
    return {"n_images": n, "image_chunk": chunk, "neuron_layers": [layer_for(k)],
            "n_layers": DIMS["n_layers"], "n_heads": DIMS["n_heads"]}  # fmt: skip


def zarr_sizes(n, chunk, k, n_neurons):
    from engine.store import schema

    nl, nh = DIMS["n_layers"], DIMS["n_heads"]
    return schema.array_sizes(
        n, nl, list(range(nl - 4, nl)), nh, DIMS["d_head"], DIMS["d_embed"], chunk,
        [layer_for(k)], n_neurons,
    )  # fmt: skip


def write_zarr(folder: Path, n, chunk, k, n_neurons, seed=0):
    """The neuron arrays of a store, written through the store's own schema and writer."""
    from engine import store

    rng = np.random.default_rng(seed)
    arrays = store.create_arrays(folder, zarr_sizes(n, chunk, k, n_neurons))
    store.write_constants(arrays, constants(rng, k, n_neurons))
    q, scale = chunk_data(rng, chunk, k, n_neurons)
    out = embeddings(rng, chunk)
    for a in range(0, n, chunk):
        m = min(chunk, n - a)
        rows = {"neuron_coord": q[:m], "neuron_scale": rows_of(scale[:, None], a, m, True),
                "output": rows_of(out, a, m, False)}  # fmt: skip
        store.write_rows(arrays, a, rows)


def evict(folder: Path) -> None:
    """Drop a folder's files from the page cache (clean pages; no root needed)."""
    for p in Path(folder).rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def measure(args) -> dict:
    """One describe_layer run in this process (the engine on sys.path)."""
    import torch

    from engine.core import neuron_analysis as na
    from engine.pipeline import neuron_interpret as ni
    from engine.pipeline.neurons import StoredNeurons
    from engine.sources.banks import load_bank

    k, nn, n, chunk = args.paths, args.neurons, args.images, args.chunk
    bank = load_bank("general")
    rng = np.random.default_rng(1)
    atoms = na.text_dictionary(rng.standard_normal((len(bank), 512)).astype(np.float32))
    if args.source == "memory":
        rng = np.random.default_rng(0)  # the same data as `write_zarr`
        const = constants(rng, k, nn)
        q, scale = chunk_data(rng, chunk, k, nn)
        arrays = {"neuron_coord": Repeated(q, n, False), **const,
                  "neuron_scale": Repeated(scale[:, None], n, True),
                  "output": Repeated(embeddings(rng, chunk), n, False)}  # fmt: skip
        path = "memory"
    else:
        from engine import store

        folder = Path(args.root) / "store"
        arrays = store.open_arrays(folder)
        if args.source == "zarr-cold":
            evict(folder)
        path = str(folder)
    sn = StoredNeurons(ArrayReader(arrays, info(n, chunk, k), path))
    parts = {"read": 0.0, "svd": 0.0, "directions": 0.0, "omp": 0.0}

    def timed(name, fn):
        def run(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                parts[name] += time.perf_counter() - t

        return run

    sn.q = timed("read", sn.q)
    sn.directions = timed("directions", sn.directions)
    na.principal_directions = timed("svd", na.principal_directions)
    na.sparse_text = timed("omp", na.sparse_text)
    load = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    d = ni.describe_layer(sn, layer_for(k), atoms, bank.categories)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "source": args.source, "engine": str(ENGINE_ROOT), "images": n, "neurons": nn, "K": k,
        "chunk": chunk, "bank": len(bank), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
        "parts_wall_s": {p: round(v, 2) for p, v in parts.items()},
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "labels": int(sum(x != "mixed" for x in d.labels)),
        "threshold_sum": float(np.sum(d.stats.threshold)),
        "mean_norm_sum": float(np.sum(d.stats.mean_norm)),
        "words": int((d.coef != 0).sum()),
    }  # fmt: skip


def child(args, source, engine_root=None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(engine_root or ROOT))
    if engine_root is not None:
        env["BENCH_ENGINE_ROOT"] = str(engine_root)
    argv = [sys.executable, __file__, "--child", "--source", source, "--images", str(args.images),
            "--paths", str(args.paths), "--neurons", str(args.neurons), "--chunk",
            str(args.chunk), "--root", str(args.root)]  # fmt: skip
    r = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"child failed:\n{r.stderr[-3000:]}")
    rec = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps(rec), file=sys.stderr, flush=True)
    return rec


def median_of(runs: list[dict]) -> dict:
    return {
        "runs": len(runs),
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "read_wall_s": statistics.median(r["parts_wall_s"]["read"] for r in runs),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=50000)
    ap.add_argument("--paths", type=int, default=12, help="K: 12 for ViT-B-32 layer 10, 36 for 8")
    ap.add_argument("--neurons", type=int, default=3072)
    ap.add_argument("--chunk", type=int, default=0, help="images per chunk (0: the schema's)")
    ap.add_argument("--sources", default="memory,zarr,zarr-cold")
    ap.add_argument(
        "--baseline",
        default=None,
        help="git revision (or a folder holding its engine/) to compare, memory source",
    )
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--root", default=None, help="folder for the Zarr arrays (default: a temp)")
    ap.add_argument("--source", default="memory")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if not args.chunk:
        from engine.store import schema

        sizes = zarr_sizes(args.images, 1, args.paths, args.neurons)
        args.chunk = schema.image_chunk_for(sizes, args.images)
    if args.child:
        print(json.dumps(measure(args)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-neurons-", dir=args.root))
    args.root = tmp
    out = {"uptime_before": os.getloadavg()}
    try:
        sources = args.sources.split(",")
        if any(s.startswith("zarr") for s in sources):
            t = time.perf_counter()
            write_zarr(tmp / "store", args.images, args.chunk, args.paths, args.neurons)
            out["zarr_write_s"] = round(time.perf_counter() - t, 1)
            out["zarr_bytes"] = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        base = None
        if args.baseline and Path(args.baseline).is_dir():  # an engine checked out already
            base = Path(args.baseline).resolve()
        elif args.baseline:
            base = tmp / "baseline"
            base.mkdir()
            arch = subprocess.run(["git", "archive", args.baseline, "engine"], cwd=ROOT,
                                  capture_output=True, check=True).stdout  # fmt: skip
            subprocess.run(["tar", "-x", "-C", str(base)], input=arch, check=True)
        runs: dict[str, list] = {}
        for _ in range(args.repeat):  # alternating: new, baseline, new, baseline, ...
            for s in sources:
                runs.setdefault(s, []).append(child(args, s))
            if base is not None:
                runs.setdefault("baseline_memory", []).append(child(args, "memory", base))
        out.update({name: {**median_of(r), "each": r} for name, r in runs.items()})
        if base is not None:
            new, old = out["memory"], out["baseline_memory"]
            out["baseline"] = args.baseline
            out["speedup_wall"] = round(old["wall_s"] / new["wall_s"], 2)
            out["speedup_cpu"] = round(old["cpu_s"] / new["cpu_s"], 2)
        out["uptime_after"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = ROOT / "benchmarks" / "results" / f"neuron_interpret_K{args.paths}.json"
    res.parent.mkdir(exist_ok=True)
    res.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict)} | {
        k: {kk: vv for kk, vv in v.items() if kk != "each"}
        for k, v in out.items() if isinstance(v, dict)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
