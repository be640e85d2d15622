"""interpret --neurons at ViT-B-32 scale: 3,072 neurons x 50,000 images, one neuron layer.

Runs `engine.pipeline.neuron_interpret.describe_layer` (both streamed passes, top-100 images,
directions through the frames, OMP over a 3,637-text bank, offline labels from the response
(`engine.core.neuron_labels`: a third read of about 4,096 images)) on stored-format data
held in memory: int8 coordinates [chunk, K, neuron] + fp16 scales, re-served for every image
chunk (Zarr reads excluded; they are one sequential read of 2.4 KB x K per image and neuron
layer), random frame constants of ViT-B-32's shapes. Reported: wall seconds at the default torch
/ BLAS threads and CPU seconds, per part.

    .venv/bin/python benchmarks/bench_neuron_interpret.py [--images 50000] [--paths 36]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core import neuron_analysis as na  # noqa: E402
from engine.core import second_order as so  # noqa: E402
from engine.pipeline.neuron_interpret import describe_layer  # noqa: E402
from engine.pipeline.neurons import StoredNeurons  # noqa: E402


class FakeReader:
    def __init__(self, n, chunk, d_embed=512):
        self.info = {"n_images": n, "image_chunk": chunk}
        self.output = np.random.default_rng(2).standard_normal((chunk, d_embed), dtype=np.float32)

    def lazy(self, name):  # the image embeddings the labels read: one chunk, served again
        assert name == "output"
        return _Rows(self.output)


class _Rows:
    def __init__(self, rows):
        self.rows = rows

    def __getitem__(self, sl):
        return self.rows[: sl.stop - sl.start]


class MemoryNeurons:
    """StoredNeurons' interface over one int8 chunk served again for every image range."""

    directions = StoredNeurons.directions

    def __init__(self, n, k, n_neurons, d_embed, d_head, chunk, seed=0):
        rng = np.random.default_rng(seed)
        self.r = FakeReader(n, chunk)
        self.n_neurons, self.K = n_neurons, k
        scale = rng.lognormal(0, 1, (chunk, n_neurons, 1)).astype(np.float32)
        heavy = rng.standard_normal((chunk, n_neurons, k), dtype=np.float32) * scale
        self.qs = so.quantise(heavy)
        self.u = rng.standard_normal((k, n_neurons, d_head), dtype=np.float32)
        self.basis = rng.standard_normal((k, d_head, d_embed), dtype=np.float32)
        tri = np.tril(rng.standard_normal((k, k), dtype=np.float32)) * 0.1 + np.eye(k)
        self.chol = np.broadcast_to(tri, (n_neurons, k, k))

    def n_paths(self, layer):
        return self.K

    def path_maps(self, layer):
        return self.u, self.basis, self.chol

    def q(self, layer, a, b):
        return self.qs[0][: b - a], self.qs[1][: b - a]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=50000)
    ap.add_argument("--paths", type=int, default=36, help="K: 36 for ViT-B-32 layer 8, 12 for 10")
    ap.add_argument("--neurons", type=int, default=3072)
    ap.add_argument("--chunk", type=int, default=256)
    args = ap.parse_args()
    from engine.sources.banks import load_bank

    bank = load_bank("general")
    rng = np.random.default_rng(1)
    atoms = na.text_dictionary(rng.standard_normal((len(bank), 512)).astype(np.float32))
    sn = MemoryNeurons(args.images, args.paths, args.neurons, 512, 64, args.chunk)
    load = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    d = describe_layer(sn, 0, atoms, bank.categories)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rec = {
        "images": args.images, "neurons": args.neurons, "K": args.paths, "bank": len(bank),
        "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_before": load,
        "load_after": os.getloadavg(), "torch_threads": torch.get_num_threads(),
        "labels": int(sum(x != "mixed" for x in d.labels)),
    }  # fmt: skip
    out = ROOT / "benchmarks" / "results" / f"neuron_interpret_K{args.paths}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rec, indent=2))
    print(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
