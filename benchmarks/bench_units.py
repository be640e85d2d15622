"""Unit-page precomputation: what it adds to `interpret`, measured in the same run.

1. Summaries (principal direction, top/bottom-k, histograms, variance share) on a random store in
   ViT-B-32's shape (last 4 layers x 12 heads, d_head 64, d_embed 512; `random_store`), images as
   given (default 100,000): `run_interpretation` with the unit precomputation replaced by a no-op
   (baseline) against the real one, alternating, best of `--repeats` each; fake unit text
   embeddings for the `general` bank (the store pass is what is measured, not the text encoder).
   The random store has no images behind it, so no maps are computed here. `--root DIR` keeps
   the store in DIR/artifacts/big (written once, reused by later runs, e.g. 1,000,000 images:
   ~6 GB, minutes to write) instead of a temporary folder; `--lock FILE` holds an exclusive
   flock on FILE around each timed run only (other benchmarks may run between them).
2. Maps (optional, `--demo STORE`): on a built store (e.g. a copy of the demo store), the full
   `run_interpretation` with `unit_maps=False` against `unit_maps=True` (the model on the 2k
   extreme images of every head, batched).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_units.py [--images N] [--demo STORE]
        [--root DIR] [--lock /work/wt/bench.lock] [--out units_million.json]
Prints a JSON record and writes benchmarks/results/units.json (or --out). Each pair of runs
alternates baseline and units; the record gives the best and the median of each.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.pipeline import interpret as interp  # noqa: E402
from engine.pipeline import units as unit_pages  # noqa: E402
from engine.store import open_store  # noqa: E402
from engine.store.random_store import write_random_store  # noqa: E402


class _NoUnits:
    """The baseline: interpret as it was before the unit pages (nothing computed or written)."""

    timings: dict = {}

    def __init__(self, *a, **k):
        pass

    def add(self, *a, **k):
        pass

    def compute_maps(self, progress=False):
        pass

    def write(self, con, run_id):
        pass


def fake_texts(s, texts):
    rng = np.random.default_rng(0)
    t = rng.standard_normal((len(texts), int(s.info["d_embed"])), dtype=np.float32)
    return t / np.linalg.norm(t, axis=1, keepdims=True)


LOCK: str | None = None  # --lock: a file flocked around each timed run
LOADS: list[float] = []  # the 1-minute load average at the start and end of each timed run


@contextlib.contextmanager
def _locked():
    if LOCK is None:
        yield
        return
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def timed(link, units: bool, **kw) -> tuple[float, float, dict]:
    real = unit_pages.UnitPrecompute
    unit_pages.UnitPrecompute = real if units else _NoUnits
    try:
        with _locked():
            LOADS.append(round(os.getloadavg()[0], 2))
            w0, c0 = time.perf_counter(), time.process_time()
            res = interp.run_interpretation(link, progress=False, **kw)
            w, c = time.perf_counter() - w0, time.process_time() - c0
            LOADS.append(round(os.getloadavg()[0], 2))
        return w, c, res.timings
    finally:
        unit_pages.UnitPrecompute = real


def compare(link, repeats: int, **kw) -> dict:
    base, units = [], []
    for _ in range(repeats):
        base.append(timed(link, False, **kw))
        units.append(timed(link, True, **kw))
    b = min(base, key=lambda x: x[0])
    u = min(units, key=lambda x: x[0])
    med = {k: [statistics.median(x[i] for x in runs) for i in (0, 1)]
           for k, runs in (("baseline", base), ("units", units))}  # fmt: skip
    return {
        "baseline_wall_s": round(b[0], 3),
        "units_wall_s": round(u[0], 3),
        "added_wall": round(u[0] / b[0] - 1, 4),
        "baseline_cpu_s": round(b[1], 3),
        "units_cpu_s": round(u[1], 3),
        "median_baseline_wall_s": round(med["baseline"][0], 3),
        "median_units_wall_s": round(med["units"][0], 3),
        "median_added_wall": round(med["units"][0] / med["baseline"][0] - 1, 4),
        "median_added_cpu": round(med["units"][1] / med["baseline"][1] - 1, 4),
        "units_timings": u[2],
        "all_wall_s": {"baseline": [round(x[0], 3) for x in base],
                       "units": [round(x[0], 3) for x in units]},
        "all_cpu_s": {"baseline": [round(x[1], 3) for x in base],
                      "units": [round(x[1], 3) for x in units]},
        "all_unit_summaries_s": [x[2].get("unit_summaries_s") for x in units],
    }  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--demo", default=None, help="a built store to copy and measure maps on")
    p.add_argument("--root", default=None, help="keep (and reuse) the random store here")
    p.add_argument("--lock", default=None, help="flock this file around each timed run")
    p.add_argument("--out", default=None, help="results file name (default units.json)")
    args = p.parse_args(argv)
    global LOCK
    LOCK = args.lock
    out = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "load_before": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "artifacts").mkdir()
        if args.images > 0:  # 0: the demo part only
            base = Path(args.root) if args.root else Path(tmp)
            link = base / "artifacts" / "big"
            out["random_store"] = {"images": args.images, "shape": "ViT-B-32 last 4 layers",
                                   "path": str(link)}  # fmt: skip
            if not (link / "store.duckdb").is_file():
                link.parent.mkdir(parents=True, exist_ok=True)
                t = time.perf_counter()
                with _locked():
                    write_random_store(link, args.images, complete=False, exact_output=False)
                out["random_store"]["write_s"] = round(time.perf_counter() - t, 1)
            with open_store(link) as r:
                if int(r.info["n_images"]) != args.images:
                    raise SystemExit(f"{link} holds {r.info['n_images']} images, not {args.images}")
            kw = {"text_embeddings_fn": fake_texts, "bank": "general"}
            out["summaries"] = compare(link, args.repeats, **kw)
        if args.demo:
            demo = Path(tmp) / "artifacts" / "demo"
            real = Path(os.path.realpath(args.demo))
            vdir = demo.parent / f".{demo.name}.versions"
            vdir.mkdir()
            shutil.copytree(real, vdir / real.name)
            os.symlink(os.path.relpath(vdir / real.name, demo.parent), demo)
            base, no_maps, maps = [], [], []
            for _ in range(args.repeats):
                base.append(timed(demo, False))
                no_maps.append(timed(demo, True, unit_maps=False))
                maps.append(timed(demo, True, unit_maps=True))
            z, b, m = min(base)[0], min(no_maps)[0], min(maps)[0]
            out["demo"] = {"store": str(args.demo), "baseline_wall_s": round(z, 3),
                           "summaries_wall_s": round(b, 3), "maps_wall_s": round(m, 3),
                           "added_wall_summaries": round(b / z - 1, 4),
                           "added_wall_with_maps": round(m / z - 1, 4),
                           "timings": min(maps)[2]}  # fmt: skip
    out["load_after"] = os.getloadavg()[0]
    out["load_per_run"] = LOADS  # start, end of each timed run, in order
    print(json.dumps(out, indent=2))
    res = ROOT / "benchmarks" / "results"
    res.mkdir(exist_ok=True)
    name = args.out or ("units.json" if args.images > 0 else "units_demo.json")
    (res / name).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
