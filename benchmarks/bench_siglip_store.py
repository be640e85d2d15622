"""A SigLIP store build against plain `encode_image`, same run: throughput ratio, bytes per image.

ViT-B-16-SigLIP at random init (no trained weights offline), `random:N` images, the default last
4 layers' heads stored (d_embed-wide coordinates in one shared basis, docs/decomposition.md).
Baseline: plain `encode_image` over the same number of preprocessed images, same process,
interleaved with the builds. Build throughput excludes model loading (as the baseline does):
images / (stream + finish seconds) for wall clock at the default threads, images / CPU seconds
after setup for CPU time. Bytes per image are measured on disk per Zarr array (constants spread
over the images) and compared with a class-token CLIP ViT-B-16 store of the same layers.

    .venv/bin/python benchmarks/bench_siglip_store.py [--model ViT-B-16-SigLIP] [--n 8]
Prints a JSON record and writes benchmarks/results/siglip_store.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.model import load_model  # noqa: E402
from engine.pipeline.build import BuildParams, build_store  # noqa: E402
from engine.pipeline.pooled_rows import PooledBatchDecomposer  # noqa: E402
from engine.pipeline.provenance import env_info  # noqa: E402
from engine.sources.collection import RandomSource  # noqa: E402
from engine.store import open_store, schema  # noqa: E402


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


@torch.no_grad()
def encode_rate(lm, batches: list[torch.Tensor]) -> tuple[float, float]:
    """Plain encode_image over ready pixel batches [image, 3, H, W]: (images/s, images/CPU-s)."""
    t0, c0 = time.perf_counter(), time.process_time()
    n = 0
    for px in batches:
        lm.model.encode_image(px)
        n += len(px)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


@torch.no_grad()
def paired(lm, batches: list[torch.Tensor], layers: list[int], reps: int) -> dict:
    """Batch by batch, alternately: plain encode_image, then the build's per-batch path
    (`PooledBatchDecomposer.rows`: hooked forward, pooled decomposition, the check, fp16 rows).
    Wall clock and CPU time of each, summed; the ratio is build time / encode time."""
    dec = PooledBatchDecomposer(lm, layers)
    dec.rows(batches[0])  # warm-up
    t = {"encode": [0.0, 0.0], "build_rows": [0.0, 0.0]}
    for _ in range(reps):
        for px in batches:
            for name, fn in (("encode", lm.model.encode_image), ("build_rows", dec.rows)):
                w0, c0 = time.perf_counter(), time.process_time()
                fn(px)
                t[name][0] += time.perf_counter() - w0
                t[name][1] += time.process_time() - c0
    return {
        "wall_s": {k: round(v[0], 3) for k, v in t.items()},
        "cpu_s": {k: round(v[1], 3) for k, v in t.items()},
        "build_time_over_encode_wall": round(t["build_rows"][0] / t["encode"][0], 3),
        "build_time_over_encode_cpu": round(t["build_rows"][1] / t["encode"][1], 3),
    }


def params(model: str, images: str, store: Path, batch: int) -> BuildParams:
    p = BuildParams(model=model, images=images, store=str(store), batch_size=batch)
    p.random_weights, p.progress = True, False
    return p


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16-SigLIP")
    ap.add_argument("--n", type=int, default=8, help="images per build")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="siglip_store.json", help="file under benchmarks/results")
    args = ap.parse_args()
    lm = load_model(args.model, random_weights=True)
    src = RandomSource(args.n, 99)
    src.image_size = lm.dims.image_size
    pixels = torch.stack(
        [src.load(i, lm.preprocess, schema.THUMB_SIZE).pixels for i in range(args.n)]
    )
    batches = list(pixels.split(args.batch))  # [image, 3, H, W] per batch
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        encode_rate(lm, batches[:1])  # warm-up
        build_store(params(args.model, f"random:{args.batch}:7", tmp / "warm", args.batch))
        enc, enc_cpu, bld, bld_cpu, timings = [], [], [], [], []
        for r in range(args.reps):  # interleaved
            wall, cpu = encode_rate(lm, batches)
            enc.append(wall)
            enc_cpu.append(cpu)
            res = build_store(params(args.model, f"random:{args.n}:{r}", tmp / f"b{r}", args.batch))
            t = res.timings
            bld.append(args.n / (t["stream_s"] + t["finish_s"]))
            bld_cpu.append(args.n / t["cpu_after_setup_s"])
            timings.append(t)
        link = tmp / "b0"
        version = link.resolve()
        with open_store(link) as r:
            layers, d_coord = r.layers, r.d_coord
            names = [n for n in schema.ARRAYS if r.has_array(n)]
            out = np.asarray(r.output(), np.float32)
            mlp = np.asarray(r.array("pool_mlp"), np.float32)
        zdir = version / schema.STORE_ZARR
        per_image = {n: round(dir_bytes(zdir / n) / args.n, 1) for n in names}
        d = lm.dims
        clip = schema.array_sizes(1, 12, layers, 12, 64, 512, 1)  # CLIP ViT-B-16, same layers
        sig = schema.array_sizes(
            1, d.n_layers, layers, d.n_heads, d.d_head, d.d_embed, 1, d_coord=d_coord, pooled=True
        )
        share = np.linalg.norm(mlp, axis=1) / np.linalg.norm(out, axis=1)
        pair = paired(lm, batches, layers, args.reps)
    record = {
        "env": env_info(),
        "model": args.model,
        "n_images": args.n,
        "batch_size": args.batch,
        "reps": args.reps,
        "stored_layers": layers,
        "d_coord": d_coord,
        "encode_images_per_s": [round(x, 3) for x in enc],
        "build_images_per_s": [round(x, 3) for x in bld],
        # time per image of the build / of encode_image (>1: the build costs more)
        "build_time_over_encode_wall": round(statistics.median(enc) / statistics.median(bld), 3),
        "encode_images_per_cpu_s": [round(x, 3) for x in enc_cpu],
        "build_images_per_cpu_s": [round(x, 3) for x in bld_cpu],
        "build_time_over_encode_cpu": round(
            statistics.median(enc_cpu) / statistics.median(bld_cpu), 3
        ),
        "paired_per_batch": pair,
        "build_timings": timings,
        "bytes_per_image_on_disk": per_image,
        "bytes_per_image_schema_raw": {
            "siglip_coord": schema.bytes_per_image(sig, ["coord"]),
            "siglip_all_but_thumbnail": schema.bytes_per_image(
                sig, [n for n in schema.ARRAYS if n != "thumbnail"]
            ),
            "clip_vit_b16_coord": schema.bytes_per_image(clip, ["coord"]),
            "clip_vit_b16_all_but_thumbnail": schema.bytes_per_image(
                clip, [n for n in schema.ARRAYS if n != "thumbnail"]
            ),
        },
        "pool_mlp_share_mean": float(share.mean()),
    }
    dest = ROOT / "benchmarks" / "results" / args.out
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
