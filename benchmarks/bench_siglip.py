"""SigLIP (attention pooling) benchmarks, ratios against a baseline measured in the same run.

1. Decomposition cost: the per-batch path a build runs (forward hooks + `decompose_pooled`:
   every stored layer's heads at every token through the frozen pool, the complete
   decomposition) divided by plain `encode_image` on the same pixels, ViT-B-16-SigLIP at random
   init. Wall clock at 2 threads (the headline) and single-thread CPU time, interleaved reps,
   medians. Both "all 12 layers" and "last 4 layers" stored.
2. The pool-MLP term's share of the embedding, ||pool_mlp|| / ||output|| (mean over images).
3. Does a per-head basis compress? Singular values of each head's stacked map
   [n_pool_heads * d_head, d_embed] (its pooled image's span): the rank and the number of
   directions holding 99% of the squared singular values, over the last layer's heads.
4. Bytes per image of the heads' coordinates (fp16) against class-token CLIP ViT-B-16.

    .venv/bin/python benchmarks/bench_siglip.py [--n 2] [--reps 3] [--models ViT-B-16-SigLIP,...]
Prints a JSON record and writes benchmarks/results/siglip.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core.pooling import decompose_pooled, pooled_bases  # noqa: E402
from engine.model import load_model  # noqa: E402
from engine.model.timm_tower import capture_pooled, pooled_weights  # noqa: E402
from engine.pipeline.provenance import env_info  # noqa: E402


def timed(fn, threads: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn() at `threads` torch threads."""
    torch.set_num_threads(threads)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


@torch.no_grad()
def cost(lm, pixels, reps: int) -> dict:
    model = lm.model
    w = pooled_weights(model)
    b = pooled_bases(w)  # once per build, as a build would
    n_layers = lm.dims.n_layers
    runs = {
        "encode_image": lambda: model.encode_image(pixels),
        "decompose_all_layers": lambda: decompose_pooled(
            w, capture_pooled(model, pixels, range(n_layers)), range(n_layers), bases=b
        ),
        "decompose_last4": lambda: decompose_pooled(
            w,
            capture_pooled(model, pixels, range(n_layers - 4, n_layers)),
            range(n_layers - 4, n_layers),
            bases=b,
        ),
    }
    for fn in runs.values():  # warm up
        fn()
    wall = {k: [] for k in runs}
    cpu1 = {k: [] for k in runs}
    for _ in range(reps):  # interleaved
        for k, fn in runs.items():
            wall[k].append(timed(fn, 2)[0])
            cpu1[k].append(timed(fn, 1)[1])
    med = {k: statistics.median(v) for k, v in wall.items()}
    med1 = {k: statistics.median(v) for k, v in cpu1.items()}
    return {
        "n_images": int(pixels.shape[0]),
        "wall_2threads_s": med,
        "cpu_1thread_s": med1,
        "ratio_wall_2threads": {
            k: med[k] / med["encode_image"] for k in runs if k != "encode_image"
        },
        "ratio_cpu_1thread": {
            k: med1[k] / med1["encode_image"] for k in runs if k != "encode_image"
        },
    }


@torch.no_grad()
def compression(lm) -> dict:
    """Rank and 99%-energy dimension of each last-layer head's pooled image span."""
    w = pooled_weights(lm.model)
    b = pooled_bases(w, torch.float64)
    H, dh, d = w.n_heads, w.d_head, w.d_model
    layer = lm.dims.n_layers - 1
    w_o = w.w_out[layer].double().T.reshape(H, dh, d)  # [head, d_head, d_model]
    R = w.pool_w_proj.double().T  # [d_pool, d_embed]
    G, dp = w.n_pool_heads, w.d_pool_head
    ranks, dims99 = [], []
    for h in range(H):
        # the head's map, stacked over pool heads: [G*d_head, d_embed]
        maps = [w_o[h] @ b.Q[g] @ R[g * dp : (g + 1) * dp] for g in range(G)]
        s = torch.linalg.svdvals(torch.cat(maps))
        ranks.append(int((s > 1e-6 * s[0]).sum()))
        energy = (s**2).cumsum(0) / (s**2).sum()
        dims99.append(int((energy < 0.99).sum()) + 1)
    return {
        "layer": layer,
        "d_head": dh,
        "n_pool_heads": G,
        "d_embed": int(R.shape[1]),
        "rank_min_max": [min(ranks), max(ranks)],
        "dims_for_99pct_energy_min_max": [min(dims99), max(dims99)],
        "coord_width_stored": b.width,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2, help="images per batch")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="ViT-B-16-SigLIP", help="comma list; the first is timed")
    ap.add_argument("--no-timing", action="store_true", help="only shares and compression")
    ap.add_argument("--out", default="siglip.json", help="file name under benchmarks/results")
    args = ap.parse_args()
    record = {"env": env_info(), "models": {}}
    for i, arch in enumerate(args.models.split(",")):
        torch.set_num_threads(2)
        lm = load_model(arch, random_weights=True)
        g = torch.Generator().manual_seed(0)
        s = lm.dims.image_size
        pixels = torch.randn(args.n, 3, s, s, generator=g)
        n_layers = lm.dims.n_layers
        with torch.no_grad():
            d = decompose_pooled(
                pooled_weights(lm.model),
                capture_pooled(lm.model, pixels, range(n_layers)),
                range(n_layers),
            )
        share = d.pool_mlp_share()
        heads = n_layers * lm.dims.n_heads
        entry = {
            "relative_error": d.relative_error(),
            "pool_mlp_share_mean": float(share.mean()),
            "pool_mlp_share_per_image": [round(float(x), 4) for x in share],
            "heads_sum_share_mean": float(
                (d.heads_sum().norm(dim=-1) / d.output.norm(dim=-1)).mean()
            ),
            "coord_bytes_per_image_all_layers_fp16": heads * d.coord.shape[-1] * 2,
            "clip_vit_b16_coord_bytes_per_image_fp16": 12 * 12 * 64 * 2,
            "compression": compression(lm),
        }
        if i == 0 and not args.no_timing:
            entry["cost"] = cost(lm, pixels, args.reps)
        record["models"][arch] = entry
        del lm, d
    out = ROOT / "benchmarks" / "results" / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
