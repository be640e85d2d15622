#!/usr/bin/env bash
# GPU build benchmark: ViT-B-32 and ViT-L-14 at random init, fp32 and fp16, over 2,000 synthetic
# 224-px images; prints images/s of `build` (end to end: decode threads, hooked forward,
# coordinates + complete decomposition, per-batch reconstruction check, Zarr + DuckDB,
# publication; model load excluded) and of plain `encode_image` on the same pixels in the same
# run. Needs CUDA; about 2-4 minutes on one modern GPU. Never part of the test suite.
#
#   bash benchmarks/bench_gpu.sh [N_IMAGES] [BATCH]      (defaults 2000, 128)
# Writes benchmarks/results/gpu.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python
N="${1:-2000}"
BATCH="${2:-128}"
exec "$PY" - "$N" "$BATCH" <<'PYEOF'
import json, os, shutil, sys, tempfile, time
from pathlib import Path

import torch

sys.path.insert(0, os.getcwd())
from engine.model import load_model
from engine.pipeline.build import BuildParams, build_store
from engine.sources.collection import SyntheticSource

n, batch = int(sys.argv[1]), int(sys.argv[2])
if not torch.cuda.is_available():
    print("CUDA is not available: this benchmark needs a GPU", file=sys.stderr)
    raise SystemExit(2)
out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "images": n,
       "batch_size": batch, "runs": []}
tmp = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
try:
    for arch in ("ViT-B-32", "ViT-L-14"):
        for precision in ("fp32", "fp16"):
            dtype = torch.float16 if precision == "fp16" else torch.float32
            lm = load_model(arch, device="cuda", random_weights=True)
            lm.model.to(dtype)
            src = SyntheticSource(min(n, 512), 0)
            src.image_size = lm.dims.image_size
            px = torch.stack([src.load(i, lm.preprocess).pixels for i in range(min(n, 512))])
            px = px.to("cuda", dtype)
            with torch.no_grad():  # plain encode_image on ready pixels, the same count
                lm.model.encode_image(px[:batch]); torch.cuda.synchronize()
                t = time.perf_counter(); done = 0
                while done < n:
                    b = px[: min(batch, n - done)]
                    lm.model.encode_image(b); done += len(b)
                torch.cuda.synchronize()
                enc = n / (time.perf_counter() - t)
            # the build loads its own model: patch load_model so it gets this one (same dtype)
            import engine.pipeline.build_plan as plan_mod
            real = plan_mod.load_model
            plan_mod.load_model = lambda *a, **k: lm
            try:
                res = build_store(BuildParams(
                    model=arch, images=f"synthetic:{n}:1", store=str(tmp / f"{arch}-{precision}"),
                    batch_size=batch, device="cuda", random_weights=True, workers=8,
                    progress=False, layers="4"))
            finally:
                plan_mod.load_model = real
            t = res.timings
            bld = n / (t["stream_s"] + t.get("finish_s", 0.0))
            row = {"model": arch, "precision": precision, "encode_image_per_s": round(enc, 1),
                   "build_per_s": round(bld, 1), "ratio": round(bld / enc, 3),
                   "decode_wait_s": t.get("decode_wait_s"), "compute_s": t.get("compute_s")}
            print(json.dumps(row), flush=True)
            out["runs"].append(row)
            del lm; torch.cuda.empty_cache()
finally:
    shutil.rmtree(tmp, ignore_errors=True)
Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
Path("benchmarks/results/gpu.json").write_text(json.dumps(out, indent=2) + "\n")
print(json.dumps(out, indent=2))
PYEOF
