"""The neurons' response labels at ViT-B-32 scale: what the label pass adds to `interpret
--neurons` (3,072 neurons, K = 36, d_embed 512, 50,000 images).

The label pass (`engine.core.neuron_labels.ResponseMoments`) reads about 4,096 images
(`response_blocks`); the baseline, timed in the same run on the same in-memory stored-format
blocks, is the first of the two streamed passes every `interpret --neurons` already makes
(`NeuronStats.update_mean`) over the same images. The whole interpret makes two such passes over
all 50,000 images, so the label pass's share of it is about ratio × 4,096 / (2 × 50,000) plus the
texts' cosines. Runs alternate (A B A B ...) and medians are reported.

    flock /work/wt/bench.lock .venv/bin/python benchmarks/bench_neuron_labels.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core import neuron_analysis as na  # noqa: E402
from engine.core import neuron_labels as nl  # noqa: E402
from engine.core import second_order as so  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=50000)
    ap.add_argument("--paths", type=int, default=36)
    ap.add_argument("--neurons", type=int, default=3072)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    q, scale = so.quantise(
        rng.standard_normal((args.chunk, args.neurons, args.paths), dtype=np.float32)
    )
    x = rng.standard_normal((args.chunk, 512), dtype=np.float32)
    v = rng.standard_normal((args.neurons, args.paths))
    atoms = na.text_dictionary(rng.standard_normal((3637, 512)))
    blocks = nl.response_blocks(args.images, args.chunk)

    def labels_pass():
        m = nl.ResponseMoments(v, 512)
        for a, b in blocks:
            m.update(q[: b - a], scale[: b - a], x[: b - a])
        nl.response_texts(m.response(), atoms)

    def mean_pass():
        st = na.NeuronStats(args.neurons, args.paths)
        for a, b in blocks:
            st.update_mean(q[: b - a], scale[: b - a])

    load = os.getloadavg()
    times = {"labels": [], "mean_pass": []}
    for _ in range(args.repeats):
        for name, fn in (("labels", labels_pass), ("mean_pass", mean_pass)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    med = {k: [statistics.median(t[i] for t in v) for i in (0, 1)] for k, v in times.items()}
    rec = {
        "images_read": sum(b - a for a, b in blocks), "neurons": args.neurons, "K": args.paths,
        "labels_wall_s": round(med["labels"][0], 3), "labels_cpu_s": round(med["labels"][1], 3),
        "mean_pass_wall_s": round(med["mean_pass"][0], 3),
        "mean_pass_cpu_s": round(med["mean_pass"][1], 3),
        "ratio_wall": round(med["labels"][0] / med["mean_pass"][0], 2),
        "load_before": load, "load_after": os.getloadavg(), "repeats": args.repeats,
    }  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "neuron_labels.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rec, indent=2))
    print(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
