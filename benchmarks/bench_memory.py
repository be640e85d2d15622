"""Peak memory of `build` is bounded by batch and chunk size, not by collection size.

Builds the same model over synthetic:N for a small and a 10x larger N, each in a fresh process,
and reports peak RSS (ru_maxrss) against a baseline process that only imports the engine and
loads the model. Uses a small model (`demo` when its weights are bundled, else `tiny-test`) so
that 20,000 images take a minute or two on 2 CPU cores; the streaming code path is the same for
every model. Also prints what the TextSpan reference's in-RAM fp32 arrays would need.

    .venv/bin/python benchmarks/bench_memory.py [--small 2000] [--large 20000] [--model M]
Writes benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
from engine.model import load_model, local_weights
from engine.pipeline.build import BuildParams, build_store
n, model, store_path = {n}, {model!r}, {store!r}
t0 = time.perf_counter()
if n == 0:
    lm = load_model(model)
    d = lm.dims.__dict__
    out = {{"dims": d}}
else:
    res = build_store(BuildParams(model=model, images=f"synthetic:{{n}}", store=store_path,
                                  batch_size={batch}, layers="all", progress=False))
    out = {{"n_images": res.n_images, "timings": res.timings}}
out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["wall_s"] = round(time.perf_counter() - t0, 2)
print(json.dumps(out))
"""


def child(n: int, model: str, store: str, batch: int) -> dict:
    code = CHILD.format(root=str(ROOT), n=n, model=model, store=store, batch=batch)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).resolve().rglob("*") if p.is_file())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--large", type=int, default=20000)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from engine.model import local_weights

    model = args.model or ("demo" if local_weights("demo") else "tiny-test")
    base = child(0, model, "", args.batch_size)
    dims = base["dims"]
    record = {"model": model, "batch_size": args.batch_size, "layers": "all", "baseline": base}
    with tempfile.TemporaryDirectory() as d:
        for label, n in (("small", args.small), ("large", args.large)):
            store = str(Path(d) / f"m{n}")
            r = child(n, model, store, args.batch_size)
            r["store_bytes"] = dir_bytes(Path(store))
            r["reference_fp32_in_ram_mib"] = round(
                n * dims["n_layers"] * dims["n_heads"] * dims["d_embed"] * 4 / 2**20, 1
            )
            r["reference_fp32_in_ram_mib_vit_b_32"] = round(n * 12 * 12 * 512 * 4 / 2**20, 1)
            record[label] = r
    s, lg = record["small"], record["large"]
    record["peak_rss_ratio_large_vs_small"] = round(lg["maxrss_mib"] / s["maxrss_mib"], 3)
    record["peak_rss_above_baseline_mib"] = {
        "small": round(s["maxrss_mib"] - base["maxrss_mib"], 1),
        "large": round(lg["maxrss_mib"] - base["maxrss_mib"], 1),
    }
    record["collection_ratio"] = args.large / args.small
    print(json.dumps(record, indent=2))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
