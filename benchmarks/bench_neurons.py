"""Second-order neuron lens benchmarks, each a ratio against a baseline measured in the same run.

1. Build overhead: `build` of the same random images without neurons vs `--neurons L-L`,
   interleaved (plain, neurons, plain, neurons, ...), torch at 2 threads; medians of the
   streaming wall clock (decode + decompose + write, model load excluded) and of the whole wall.
2. Per-batch CPU seconds of `BatchDecomposer.rows` (1 thread) without and with the lens.
3. Bytes per image of the stored lens (on disk and from the schema) for each neuron layer,
   against the reference's fp32 [image, neuron, d_embed] arrays.

    .venv/bin/python benchmarks/bench_neurons.py [--model ViT-B-32] [--layer 8] [--n 96] [--reps 2]
Prints a JSON record and writes benchmarks/results/neurons.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.pipeline.build import BuildParams, build_store  # noqa: E402
from engine.pipeline.provenance import env_info  # noqa: E402
from engine.store import open_store, schema  # noqa: E402

NEURON_ARRAYS = ("neuron_coord", "neuron_scale", "neuron_total")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def build(model, n, tmp, neurons, batch, tag):
    link = Path(tmp) / tag
    p = BuildParams(
        model=model, images=f"random:{n}:0", store=str(link), batch_size=batch,
        random_weights=True, progress=False, neurons=neurons, force=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    res = build_store(p)
    wall = time.perf_counter() - t0
    return link, {"wall_s": wall, "stream_s": res.timings["stream_s"]}


def per_batch_cpu(model, layer, batch, reps):
    from engine.model import load_model
    from engine.pipeline.rows import BatchDecomposer

    torch.set_num_threads(1)
    lm = load_model(f"{model}/openai", random_weights=True)
    n_layers = lm.dims.n_layers
    layers = list(range(n_layers - 4, n_layers))
    g = torch.Generator().manual_seed(0)
    s = lm.dims.image_size
    pixels = torch.randn(batch, 3, s, s, generator=g)
    plain = BatchDecomposer(lm, layers)
    lens = BatchDecomposer(lm, layers, neuron_layers=[layer])
    out = {"plain": [], "neurons": []}
    for _ in range(reps):
        for name, d in (("plain", plain), ("neurons", lens)):
            t0 = time.process_time()
            d.rows(pixels)
            out[name].append(time.process_time() - t0)
    torch.set_num_threads(2)
    a, b = statistics.median(out["plain"]), statistics.median(out["neurons"])
    return {"batch": batch, "plain_cpu_s": a, "neurons_cpu_s": b, "ratio": b / a}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--layer", type=int, default=8)
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    spec = f"{args.model}/openai"
    record = {"env": env_info(), "load": os.getloadavg(), "model": spec, "n": args.n}
    runs = {"plain": [], "neurons": []}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name, neurons in (("plain", None), ("neurons", f"{args.layer}-{args.layer}")):
                link, t = build(spec, args.n, tmp, neurons, args.batch, f"{name}{rep}")
                runs[name].append(t)
                if name == "neurons" and rep == 0:
                    with open_store(link) as r:
                        zdir = Path(os.path.realpath(link)) / schema.STORE_ZARR
                        n = int(r.info["n_images"])
                        disk = sum(dir_bytes(zdir / a) for a in NEURON_ARRAYS)
                        sizes["on_disk_bytes_per_image"] = disk / n
        med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_s", "stream_s")}
               for k, v in runs.items()}  # fmt: skip
    record["build"] = {
        "runs": runs,
        "median": med,
        "stream_overhead": med["neurons"]["stream_s"] / med["plain"]["stream_s"] - 1,
        "wall_overhead": med["neurons"]["wall_s"] / med["plain"]["wall_s"] - 1,
    }
    d = {"n_layers": 12, "n_heads": 12, "d_embed": 512, "d_mlp": 3072}
    if args.model != "ViT-B-32":
        d = None
    per_layer = {}
    if d:
        for l in (8, 9, 10):
            sz = schema.array_sizes(1, d["n_layers"], [], d["n_heads"], 64, d["d_embed"], 1,
                                    [l], d["d_mlp"])  # fmt: skip
            per_layer[str(l)] = schema.bytes_per_image(sz, NEURON_ARRAYS)
        sizes["schema_bytes_per_image"] = per_layer
        sizes["reference_bytes_per_image"] = d["d_mlp"] * d["d_embed"] * 4
    record["bytes"] = sizes
    record["per_batch_cpu"] = per_batch_cpu(args.model, args.layer, args.batch, args.reps + 1)
    record["load_after"] = os.getloadavg()
    out = ROOT / "benchmarks" / "results" / "neurons.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
