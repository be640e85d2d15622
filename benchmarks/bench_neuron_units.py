"""Neuron unit pages: what they add to `interpret --neurons` and to `demo-store`, same run.

On a built store with neurons (e.g. the demo store: `demo-store` or `build --neurons 6-6`),
alternating, `--repeats` rounds of three `run_neuron_interpretation` runs:

  A. baseline: the unit precomputation replaced by a no-op (interpret --neurons as before it);
  B. the unit summaries only (top/bottom-k, histograms, texts; `unit_map_neurons=0`);
  C. the default (maps on the 64 most significant neurons' examples: the model on their images).

Then once: `visualise` of the 4 most significant neurons at demo-store's 32 steps (what
`demo-store` adds beside the neuron rows). Medians; load average before and after.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_neuron_units.py --store S [--repeats 2]
Prints a JSON record and writes benchmarks/results/neuron_units.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.pipeline import neuron_units  # noqa: E402
from engine.pipeline.neuron_interpret import run_neuron_interpretation  # noqa: E402
from engine.pipeline.visualise import run_visualise  # noqa: E402


class _NoUnits:
    """The baseline: nothing computed or written for the unit pages."""

    def __init__(self, *a, **k):
        self.timings = {}

    def add_norms(self, *a):
        pass

    def add_layer(self, *a):
        pass

    def compute_maps(self, *a):
        pass

    def write(self, *a):
        pass


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _run(store: str, mode: str) -> dict:
    real = neuron_units.NeuronUnitPrecompute
    if mode == "baseline":
        neuron_units.NeuronUnitPrecompute = _NoUnits
    try:
        t, c = time.perf_counter(), time.process_time()
        res = run_neuron_interpretation(
            store, None, None, progress=False, unit_map_neurons=0 if mode == "summaries" else None
        )
        return {"mode": mode, "wall_s": round(time.perf_counter() - t, 3),
                "cpu_s": round(time.process_time() - c, 3), "timings": res.timings}  # fmt: skip
    finally:
        neuron_units.NeuronUnitPrecompute = real


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", required=True)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--visualise", type=int, default=4, help="neurons to visualise (0: skip)")
    ap.add_argument("--layer", type=int, default=6, help="their neuron layer (the demo's: 6)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/neuron_units.json"))
    args = ap.parse_args()
    record = {"store": args.store, "host": platform.node(), "load_before": _load(), "runs": []}
    _run(args.store, "baseline")  # warm: text embeddings cached, imports done
    for _ in range(args.repeats):
        for mode in ("baseline", "summaries", "full"):
            record["runs"].append(_run(args.store, mode))
            print(json.dumps(record["runs"][-1]), flush=True)
    med = {m: statistics.median(r["wall_s"] for r in record["runs"] if r["mode"] == m)
           for m in ("baseline", "summaries", "full")}  # fmt: skip
    record["median_wall_s"] = med
    record["added_summaries"] = round(med["summaries"] / med["baseline"] - 1, 3)
    record["added_full"] = round(med["full"] / med["baseline"] - 1, 3)
    if args.visualise:
        t = time.perf_counter()
        rows = run_visualise(args.store, f"neurons:L{args.layer}:top:{args.visualise}", steps=32,
                             progress=False)  # fmt: skip
        record["visualise"] = {
            "neurons": [r.name for r in rows], "steps": 32,
            "wall_s": round(time.perf_counter() - t, 2),
            "sd_above_random_fourier": [round(r.sigmas_above_init, 1) for r in rows],
        }  # fmt: skip
    record["load_after"] = _load()
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
