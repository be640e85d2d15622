"""Mean-ablation benchmark: zero-shot accuracy under ablation with a random-head baseline, at the
shapes of a 50,000-image ViT-B-32 store, and its ratio to one plain matrix product.

Synthetic data (not timed): 50,000 images; the last 4 of 12 layers stored as 48 heads x 64
coordinates (fp16) with orthonormal bases [64, 512]; 12 MLP terms, 8 other-layer attention terms
and the embedding (fp16 [image, 512]); per-layer bias terms scaled by 1/std; 1,000 classes;
every image labelled. `output` is random (the timing does not depend on the terms summing to it).

Timed, each with `engine.core.ablation.run_ablation` at split 0.5 (means over 25,000 images,
25,000 evaluated), from scratch (fit means, unablated logits, ablation, baselines):
  heads8     8 heads (2 per stored layer) + 10 random draws of 8 heads from the same layers
  heads24    24 heads (6 per stored layer) + 10 random draws
  abl4       all-but-last:4 (every MLP, attention of layers 0-7, embedding; no baseline)
Reference: one plain product [image, d_embed] @ [d_embed, class] over all 50,000 images, float32.

    .venv/bin/python benchmarks/bench_ablation.py [--images 50000] [--classes 1000] [--draws 10]
Prints a JSON record and writes benchmarks/results/ablation.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core.ablation import ComponentSet, run_ablation, split  # noqa: E402
from engine.core.zeroshot import ZeroShotTask  # noqa: E402

N_LAYERS, STORED, N_HEADS, D_HEAD, D_EMBED = 12, (8, 9, 10, 11), 12, 64, 512


def synthetic(n: int, n_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)

    def f16(*shape):
        return rng.standard_normal(shape, dtype=np.float32).astype(np.float16)

    q, _ = np.linalg.qr(rng.standard_normal((len(STORED) * N_HEADS, D_EMBED, D_HEAD)))
    basis = np.swapaxes(q, 1, 2).reshape(len(STORED), N_HEADS, D_HEAD, D_EMBED)
    cs = ComponentSet.from_arrays(
        coord=f16(n, len(STORED), N_HEADS, D_HEAD),
        basis=basis.astype(np.float32),
        head_layers=STORED,
        mlp=f16(n, N_LAYERS, D_EMBED),
        attn=f16(n, N_LAYERS - len(STORED), D_EMBED),
        attn_layers=[l for l in range(N_LAYERS) if l not in STORED],
        embed=f16(n, D_EMBED),
        attn_bias=rng.standard_normal((len(STORED), D_EMBED), dtype=np.float32),
        std=rng.uniform(0.5, 2.0, n).astype(np.float32),
        ln_bias=rng.standard_normal(D_EMBED, dtype=np.float32),
        n_layers=N_LAYERS,
    )
    output = rng.standard_normal((n, D_EMBED), dtype=np.float32)
    class_emb = rng.standard_normal((n_classes, D_EMBED), dtype=np.float32)
    labels = rng.integers(0, n_classes, n)
    task = ZeroShotTask(
        "imagenet-like", tuple(f"c{i}" for i in range(n_classes)), labels, class_emb
    )
    return cs, output, task


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=1_000)
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ablation.json"))
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    cs, output, task = synthetic(a.images, a.classes)
    gen_s = time.perf_counter() - t0
    fit, ev = split(a.images, 0.5, seed=0)

    x, c = output, np.ascontiguousarray(task.class_emb.T)
    matmul_s = timed(lambda: x @ c, repeat=3)

    specs = {
        "heads8": [f"L{l}H{h}" for l in STORED for h in (0, 1)],
        "heads24": [f"L{l}H{h}" for l in STORED for h in range(6)],
        "abl4": cs.select("all-but-last:4"),
    }
    runs = {}
    for name, names in specs.items():
        draws = a.draws if name != "abl4" else 0
        res = {}

        def go(names=names, draws=draws, res=res):
            res["r"] = run_ablation(output, cs, names, [task], fit, ev, random_draws=draws)

        wall = timed(go)
        t = res["r"].tasks[0]
        runs[name] = {
            "components": len(names),
            "random_draws": len(res["r"].random_draws),
            "wall_s": round(wall, 3),
            "ratio_to_matmul": round(wall / matmul_s, 2),
            "accuracy_before": t.before,
            "accuracy_after": t.after,
        }
    record = {
        "benchmark": "ablation",
        "images": a.images,
        "n_fit": len(fit),
        "n_eval": len(ev),
        "classes": a.classes,
        "heads_stored": len(STORED) * N_HEADS,
        "d_head": D_HEAD,
        "d_embed": D_EMBED,
        "plain_matmul_s": round(matmul_s, 4),
        "runs": runs,
        "target_s": 10.0,
        "data_generation_s": round(gen_s, 1),
        "machine": {"python": platform.python_version(), "numpy": np.__version__},
    }
    print(json.dumps(record, indent=2))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
