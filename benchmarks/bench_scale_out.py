"""Scale-out benchmark: 2 Ray workers against 1 process over the same images, Ray's fixed start-up
cost, and the per-chunk costs a cluster estimate is built from.

1. One process (`build_store`, torch's default threads, 2 decoding threads) and `--executor ray`
   with 2 actors (1 CPU each) build the same `random:N` collection with the same model, batch
   size and chunking; both stores are checked bit-identical. Wall clock, model load included.
2. Ray's fixed cost: `ray.init` of a local 2-CPU cluster + 2 trivial actors ready + shutdown.
3. Per-chunk costs from the single build's chunk records (decode wait, compute, write per image).

    .venv/bin/python benchmarks/bench_scale_out.py [--model ViT-B-32] [--n 192] [--chunk 32]
Prints a JSON record and writes benchmarks/results/scale_out.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import store
from engine.pipeline.build import BuildParams, build_store
from engine.pipeline.distributed import RayOptions, build_with_ray
from engine.pipeline.provenance import env_info


def ray_fixed_cost() -> dict:
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, configure_logging=False)  # fmt: skip
    t_init = time.perf_counter() - t0

    @ray.remote(num_cpus=1)
    class Nop:
        def ping(self) -> int:
            return os.getpid()

    actors = [Nop.remote() for _ in range(2)]
    ray.get([a.ping.remote() for a in actors])
    t_actors = time.perf_counter() - t0 - t_init
    t1 = time.perf_counter()
    ray.shutdown()
    t_shutdown = time.perf_counter() - t1
    return {
        "init_s": round(t_init, 2),
        "two_actors_ready_s": round(t_actors, 2),
        "shutdown_s": round(t_shutdown, 2),
        "total_s": round(t_init + t_actors + t_shutdown, 2),
    }


def chunk_costs(link: Path, staging_records: list[dict]) -> dict:
    n = sum(r["n"] for r in staging_records)
    tot = {k: sum(r["timings"][k] for r in staging_records) for k in staging_records[0]["timings"]}
    return {f"{k}_per_image_ms": round(1000 * v / n, 2) for k, v in tot.items()} | {
        "chunks": len(staging_records),
        "images": n,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--n", type=int, default=192)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))

    def params(name: str) -> BuildParams:
        return BuildParams(model=args.model, images=f"random:{args.n}:1", store=str(tmp / name),
                           batch_size=args.batch, image_chunk=args.chunk, random_weights=True,
                           progress=False)  # fmt: skip

    fixed = ray_fixed_cost()
    records: list[dict] = []
    real_finish = store.finish_staging

    def keep_records(folder):  # the chunk records are deleted at publication: copy them first
        records.extend(store.load_chunk_records(folder))
        real_finish(folder)

    store.finish_staging = keep_records
    t0 = time.perf_counter()
    single = build_store(params("single"))
    single_s = time.perf_counter() - t0
    store.finish_staging = real_finish
    t0 = time.perf_counter()
    dist = build_with_ray(params("ray"), RayOptions(num_workers=2))
    ray_s = time.perf_counter() - t0

    with store.open_store(single.store) as a, store.open_store(dist.store) as b:
        identical = all(
            np.array_equal(a.array(name), b.array(name))
            for name in store.schema.ARRAYS
            if a.has_array(name)
        )
    out = {
        "benchmark": "scale_out",
        "env": env_info(),
        "model": args.model,
        "n_images": args.n,
        "image_chunk": args.chunk,
        "batch_size": args.batch,
        "single_process_wall_s": round(single_s, 2),
        "ray_2_workers_wall_s": round(ray_s, 2),
        "speedup_ray_over_single": round(single_s / ray_s, 3),
        "ray_timings": dist.timings,
        "single_timings": single.timings,
        "bit_identical": identical,
        "ray_fixed_cost": fixed,
        "per_chunk": chunk_costs(single.store, records),
    }
    print(json.dumps(out, indent=1))
    res = ROOT / "benchmarks" / "results" / "scale_out.json"
    res.write_text(json.dumps(out, indent=1) + "\n")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
