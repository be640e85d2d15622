"""Build benchmarks, each a ratio against a baseline measured in the same run.

0. Decomposition overhead in single-thread CPU seconds (the stable measure on a shared machine):
   plain encode_image vs the build's per-batch path (`BatchDecomposer.rows`: coordinates, the
   complete decomposition, the reconstruction check) vs the previous d_embed path (keys and
   values recomputed, head_projection rebuilt every batch, [image, head, d_embed] fp16) vs an
   all-layers d_embed extraction in the style of the TextSpan reference (every layer's heads,
   [image, layer, head, d_embed]; our reimplementation of that computation, not its code).
1. Decomposition overhead: `build` throughput (random images, last 4 layers stored, end to end:
   decode/preprocess threads, hooks, decomposition, fp16, Zarr + chunk records) divided by plain
   `model.encode_image` throughput on ready pixel batches, same model, batch size and device.
   Measurements are interleaved (encode, build, encode, build, ...) and the medians compared.
2. Bytes stored per image against the TextSpan reference's fp32 [image, layer (all), head,
   d_embed] arrays.
3. coord layout: writing a collection chunk by chunk, then reading one (layer, head) over all
   images, for our layout (inner chunks (C, 1, 1, d_head) in shards (C, layer, head, d_head))
   against unsharded (C, 1, 1, d_head) chunks and one chunk per head over all images.

    .venv/bin/python benchmarks/bench_build.py [--model ViT-B-32] [--n 160] [--reps 3] [--quick]
Prints a JSON record and writes benchmarks/results/build.json.
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
import zarr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core import decompose  # noqa: E402
from engine.model import capture, load_model, vision_weights  # noqa: E402
from engine.pipeline.build import BuildParams, build_store  # noqa: E402
from engine.pipeline.provenance import env_info  # noqa: E402
from engine.pipeline.rows import BatchDecomposer  # noqa: E402
from engine.sources.collection import RandomSource  # noqa: E402
from engine.store import (
    open_store,  # noqa: E402
    schema,  # noqa: E402
)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


@torch.no_grad()
def dense_path(w, cap, layers) -> np.ndarray:
    """The previous build's per-batch work: keys and values of every token recomputed, the
    per-head map W_O[h] @ P rebuilt every batch, contributions in d_embed, fp16 to host."""
    P = decompose.ln_projection(w)
    resid = cap.resid.float()
    inv = 1.0 / (resid.var(dim=-1, unbiased=False) + w.ln_post_eps).sqrt()
    out = []
    for l in layers:
        x = cap.attn_in[l].float()
        n, t, d = x.shape
        hd = d // w.n_heads
        w_q, w_k, w_v = w.w_in[l].float().split(d)
        b_q, b_k, b_v = w.b_in[l].float().split(d)
        q = (x[:, 0] @ w_q.T + b_q).reshape(n, w.n_heads, 1, hd)
        k = (x @ w_k.T + b_k).reshape(n, t, w.n_heads, hd).transpose(1, 2)
        v = (x @ w_v.T + b_v).reshape(n, t, w.n_heads, hd).transpose(1, 2)
        pattern = ((q @ k.transpose(-1, -2)).squeeze(2) / hd**0.5).softmax(-1)
        z = (pattern[..., None] * v).sum(dim=2)
        W = decompose.head_projection(w, l, P)
        out.append(torch.einsum("ihd,hde->ihe", z, W) * inv[:, None, None])
    return torch.stack(out, dim=1).to(torch.float16).cpu().numpy()


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
    (hooks + decomposition + fp16 copy to host). Pairing cancels drifts in machine load."""
    dec = BatchDecomposer(lm, layers)
    t_enc = t_dec = 0.0
    n = 0
    for _ in range(reps):
        for px in batches:
            t0 = time.perf_counter()
            lm.model.encode_image(px)
            t1 = time.perf_counter()
            dec.rows(px)
            t2 = time.perf_counter()
            t_enc += t1 - t0
            t_dec += t2 - t1
            n += len(px)
    return {
        "encode_images_per_s": round(n / t_enc, 2),
        "decompose_path_images_per_s": round(n / t_dec, 2),
        "ratio": round(t_enc / t_dec, 3),
    }


def overhead(model: str, n: int, batch: int, reps: int, tmp: Path) -> dict:
    lm = load_model(model, random_weights=True)
    src = RandomSource(n, 99)
    src.image_size = lm.dims.image_size
    pixels = torch.stack([src.load(i, lm.preprocess, schema.THUMB_SIZE).pixels for i in range(n)])
    batches = list(pixels.split(batch))  # [image, 3, H, W] per batch
    encode_rate(lm, batches[:1])  # warm-up
    warm = BuildParams(model, f"random:{batch}:7", str(tmp / "warm"), batch_size=batch)
    warm.random_weights, warm.progress = True, False
    build_store(warm)  # warm-up: first-call costs of hooks, threads, zarr
    enc, bld, bld_e2e, timings, enc_cpu, bld_cpu = [], [], [], [], [], []
    for r in range(reps):
        wall, cpu = encode_rate(lm, batches)
        enc.append(wall)
        enc_cpu.append(cpu)
        res = build_store(
            BuildParams(
                model=model,
                images=f"random:{n}:{r}",
                store=str(tmp / f"bench{r}"),
                batch_size=batch,
                random_weights=True,
                progress=False,
            )
        )
        t = res.timings
        bld.append(n / (t["stream_s"] + t["finish_s"]))  # model loading excluded, as for encode
        bld_e2e.append(n / t["wall_s"])
        bld_cpu.append(n / t["cpu_after_setup_s"])  # CPU time is robust to other processes
        timings.append(t)
    layers = list(range(max(0, lm.dims.n_layers - 4), lm.dims.n_layers))  # as the build stores
    pair = paired(lm, batches, layers, reps)
    store_path = tmp / "bench0"
    version = Path(store_path).resolve()
    zdir = version / schema.STORE_ZARR
    d = lm.dims
    with open_store(store_path) as r:
        chunk = r.info["image_chunk"]
    per_image = {name: dir_bytes(zdir / name) / n for name in schema.ARRAYS}  # measured, on disk
    ref_fp32 = d.n_layers * d.n_heads * d.d_embed * 4
    complete = sum(v for k, v in per_image.items() if k != "thumbnail")
    return {
        "model": model,
        "dims": d.__dict__,
        "n_images": n,
        "batch_size": batch,
        "reps": reps,
        "encode_images_per_s": [round(x, 2) for x in enc],
        "build_images_per_s": [round(x, 2) for x in bld],
        "build_images_per_s_with_model_load": [round(x, 2) for x in bld_e2e],
        "overhead_ratio": round(statistics.median(bld) / statistics.median(enc), 3),
        "encode_images_per_cpu_s": [round(x, 2) for x in enc_cpu],
        "build_images_per_cpu_s": [round(x, 2) for x in bld_cpu],
        "overhead_ratio_cpu_time": round(
            statistics.median(bld_cpu) / statistics.median(enc_cpu), 3
        ),
        "overhead_ratio_with_model_load": round(
            statistics.median(bld_e2e) / statistics.median(enc), 3
        ),
        "paired_per_batch": pair,
        "build_timings": timings,
        "bytes_per_image": {k: round(v, 1) for k, v in per_image.items()},
        "image_chunk": chunk,
        "bytes_per_image_note": "Zarr bytes on disk / images (constants included, spread over n)",
        "bytes_per_image_complete_decomposition": round(complete, 1),
        "bytes_per_image_duckdb": round((version / schema.STORE_DB).stat().st_size / n, 1),
        "reference_fp32_all_layers_bytes_per_image": ref_fp32,
        "coord_ratio_vs_reference": round(per_image["coord"] / ref_fp32, 4),
        "zarr_ratio_vs_reference": round(sum(per_image.values()) / ref_fp32, 4),
    }


def single_thread_cpu(model: str, n: int, batch: int, reps: int, tmp: Path) -> dict:
    """CPU seconds with torch on one thread and one decode worker: immune to other processes'
    load (no OpenMP spin-waiting), so the ratio is stable on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lm = load_model(model, random_weights=True)
        src = RandomSource(n, 5)
        src.image_size = lm.dims.image_size
        batches = list(
            torch.stack(
                [src.load(i, lm.preprocess, schema.THUMB_SIZE).pixels for i in range(n)]
            ).split(batch)
        )
        weights = vision_weights(lm)
        layers = list(range(max(0, lm.dims.n_layers - 4), lm.dims.n_layers))
        all_layers = list(range(lm.dims.n_layers))
        enc, dec, old, ref, bld = [], [], [], [], []
        with torch.no_grad():
            lm.model.encode_image(batches[0])  # warm-up
            for r in range(reps):
                c0 = time.process_time()
                for px in batches:
                    lm.model.encode_image(px)
                c1 = time.process_time()
                rows = BatchDecomposer(lm, layers)  # once per build, as the build does
                for px in batches:
                    rows.rows(px)
                c2 = time.process_time()
                for px in batches:
                    dense_path(weights, capture(lm, px, layers), layers)
                c3 = time.process_time()
                for px in batches:
                    dense_path(weights, capture(lm, px, all_layers), all_layers)
                c4 = time.process_time()
                enc.append(c1 - c0)
                dec.append(c2 - c1)
                old.append(c3 - c2)
                ref.append(c4 - c3)
                res = build_store(
                    BuildParams(
                        model=model,
                        images=f"random:{n}:{r}",
                        store=str(tmp / f"st{r}"),
                        batch_size=batch,
                        random_weights=True,
                        workers=1,
                        progress=False,
                    )
                )
                bld.append(res.timings["cpu_after_setup_s"])  # decode .. publish, all threads
    finally:
        torch.set_num_threads(threads)
    e, d_, b = statistics.median(enc), statistics.median(dec), statistics.median(bld)
    o, rf = statistics.median(old), statistics.median(ref)
    return {
        "n_images": n,
        "encode_cpu_s": [round(x, 2) for x in enc],
        "decompose_path_cpu_s": [round(x, 2) for x in dec],
        "previous_d_embed_path_cpu_s": [round(x, 2) for x in old],
        "reference_style_all_layers_d_embed_cpu_s": [round(x, 2) for x in ref],
        "build_cpu_s": [round(x, 2) for x in bld],
        "ratio_decompose_path": round(e / d_, 3),
        "ratio_previous_d_embed_path": round(e / o, 3),
        "ratio_reference_style_extraction": round(e / rf, 3),
        "ratio_build_end_to_end": round(e / b, 3),
    }


def layout(n: int, n_layers: int, n_heads: int, d_embed: int, chunk: int, tmp: Path) -> dict:
    """Write [n, layer, head, d] fp16 chunk by chunk, then read one head over all images
    (d = d_head: the coord array)."""
    rng = np.random.default_rng(0)
    slab = rng.standard_normal((chunk, n_layers, n_heads, d_embed)).astype(np.float16)
    shape = (n, n_layers, n_heads, d_embed)
    layouts = {
        "ours: chunk (C,1,1,d) in shard (C,L,H,d)": dict(
            chunks=(chunk, 1, 1, d_embed), shards=(chunk, n_layers, n_heads, d_embed)
        ),
        "chunk (C,1,1,d), no shards": dict(chunks=(chunk, 1, 1, d_embed), shards=None),
        "chunk (N,1,1,d): one chunk per head": dict(chunks=(n, 1, 1, d_embed), shards=None),
    }
    out = {}
    for name, kw in layouts.items():
        path = tmp / f"layout{len(out)}.zarr"
        arr = zarr.create_array(
            str(path), shape=shape, dtype="float16", compressors=None, fill_value=0, **kw
        )
        t0 = time.perf_counter()
        for s in range(0, n, chunk):  # the build's write pattern: one image chunk at a time
            arr[s : s + chunk] = slab[: min(chunk, n - s)]
        write_s = time.perf_counter() - t0
        arr = zarr.open_array(str(path), mode="r")
        reads = []
        for li, h in [(0, 0), (n_layers - 1, n_heads // 2), (1 % n_layers, n_heads - 1)]:
            t0 = time.perf_counter()
            arr[:, li, h, :]
            reads.append(time.perf_counter() - t0)
        out[name] = {
            "write_s": round(write_s, 3),
            "read_one_head_s": round(statistics.median(reads), 4),
            "files": sum(1 for p in path.rglob("*") if p.is_file()),
        }
    return {"n_images": n, "layer": n_layers, "head": n_heads, "d_embed": d_embed, **out}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n-cpu", type=int, default=64, help="images for the single-thread run")
    ap.add_argument("--layout-n", type=int, default=8192)
    ap.add_argument("--quick", action="store_true", help="tiny-test model, small sizes")
    args = ap.parse_args()
    if args.quick:
        args.model, args.n, args.reps, args.layout_n, args.n_cpu = "tiny-test", 64, 2, 2048, 64
    torch.manual_seed(0)
    record = {"env": {**env_info(), "torch_threads": torch.get_num_threads()}}
    with tempfile.TemporaryDirectory(
        dir=ROOT / "artifacts" if (ROOT / "artifacts").is_dir() else None
    ) as d:
        tmp = Path(d)
        record["single_thread_cpu"] = single_thread_cpu(
            args.model, args.n_cpu, args.batch_size, 2, tmp
        )
        record["overhead"] = ov = overhead(args.model, args.n, args.batch_size, args.reps, tmp)
        dims = ov["dims"]
        sizes = schema.array_sizes(
            args.layout_n, dims["n_layers"], list(range(max(0, dims["n_layers"] - 4), dims["n_layers"])),
            dims["n_heads"], dims["d_head"], dims["d_embed"], 1,
        )  # fmt: skip
        chunk = schema.image_chunk_for(sizes, args.layout_n)
        record["layout"] = layout(
            args.layout_n, min(4, dims["n_layers"]), dims["n_heads"], dims["d_head"], chunk, tmp
        )
        record["bytes_per_image_schema"] = {
            name: {
                "coord": schema.bytes_per_image(s, ["coord"]),
                "complete": schema.bytes_per_image(
                    s, [a for a in schema.ARRAYS if a != "thumbnail"]
                ),
            }
            for name, s in {
                "ViT-B-32": schema.array_sizes(1, 12, [8, 9, 10, 11], 12, 64, 512, 1),
                "ViT-L-14": schema.array_sizes(1, 24, [20, 21, 22, 23], 16, 64, 768, 1),
            }.items()
        }
    print(json.dumps(record, indent=2))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / ("build_quick.json" if args.quick else "build.json")).write_text(
        json.dumps(record, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
