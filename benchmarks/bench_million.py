"""A million-image store that stays fast: ViT-B-32 shape, last 4 layers (48 heads x 64 coords).

The store is written at the Zarr level by `engine.store.random_store` (random coordinates in
random orthonormal bases; MLP / rest terms left unwritten, `output` random: nothing here reads
them), ~6 GB, then measured on this machine:

1. one head read cold from Zarr (the head's shard files evicted from the page cache with
   posix_fadvise(DONTNEED) first; a fresh reader) -> [image, d_head];
2. per-head top-8 by cosine, warm (`HeadContributions` in coordinates);
3. property neighbours over 4 heads, both combine modes (`sum` through the cross-Gram matrices);
4. TextSpan over all 48 heads (3,500 unit texts, rank 80, 10 texts), each head read once from
   Zarr: read time and compute time reported apart.
The dashboard's RSS over this store: `bench_dashboard.py --memory-only --keep ROOT`.

    .venv/bin/python benchmarks/bench_million.py [--images 1000000] [--root /tmp/million] [--keep]
Prints a JSON record and writes benchmarks/results/million.json. Deletes the store unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core import analysis  # noqa: E402
from engine.core.textspan import project_bank, textspan  # noqa: E402
from engine.store import open_store, schema  # noqa: E402
from engine.store.random_store import write_random_store  # noqa: E402

NAME = "vitb32-million"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def evict(path: Path) -> None:
    """Drop a folder's files from the page cache (clean pages; no root needed)."""
    for p in Path(path).rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(fn, n: int = 5) -> tuple[float, float, object]:
    """(median wall ms, median CPU ms, last result) over n calls after one warm-up."""
    out = fn()
    walls, cpus = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append((time.perf_counter() - t) * 1000)
        cpus.append((time.process_time() - c) * 1000)
    return statistics.median(walls), statistics.median(cpus), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1_000_000)
    ap.add_argument("--root", default="/tmp/million")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the store")
    ap.add_argument("--texts", type=int, default=3_500)
    ap.add_argument("--textspan-heads", type=int, default=48)
    args = ap.parse_args(argv)
    root = Path(args.root)
    link = root / NAME
    rec: dict = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
        "images": args.images,
    }
    try:
        if not (link / schema.STORE_DB).is_file():
            root.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            write_random_store(link, args.images, complete=False, exact_output=False, progress=True)
            rec["write_s"] = round(time.perf_counter() - t, 1)
        version = Path(os.path.realpath(link))
        zdir = version / schema.STORE_ZARR
        rec["store_bytes"] = dir_bytes(version)
        rec["coord_bytes_per_image"] = round(dir_bytes(zdir / "coord") / args.images, 1)

        # 1. cold head reads: a fresh reader, the coord files out of the page cache
        cold = []
        for lay, h in [(8, 0), (10, 5), (11, 11)]:
            evict(zdir / "coord")
            with open_store(link) as r:
                t = time.perf_counter()
                r.coord_array[:, r.layers.index(lay), h, :]
                cold.append(time.perf_counter() - t)
        rec["cold_head_read_s"] = [round(x, 2) for x in cold]
        rec["cold_head_read_s_median"] = round(statistics.median(cold), 2)
        rec["cold_head_read_target_s"] = 3

        with open_store(link) as r:
            rng = np.random.default_rng(0)
            heads = [(11, h) for h in range(4)]
            t = time.perf_counter()
            banks = [
                analysis.HeadContributions.from_coords(
                    r.coord_array[:, r.layers.index(lay), h, :], r.basis(lay, h)
                )
                for lay, h in heads
            ]
            rec["four_heads_to_cache_s"] = round(time.perf_counter() - t, 2)
            rec["one_head_cache_bytes"] = banks[0].nbytes
            # 2. warm top-k
            q = rng.standard_normal(512).astype(np.float32)
            wall, cpu, _ = timed(lambda: analysis.top_k(banks[0].cosine(q), 8), 10)
            rec["topk_warm_ms"], rec["topk_warm_cpu_ms"], rec["topk_target_ms"] = (
                round(wall, 1), round(cpu, 1), 50,
            )  # fmt: skip
            # 3. property neighbours over 4 heads
            query = np.stack([b.row(123) for b in banks])  # image 123's four heads
            for mode in analysis.COMBINE_MODES:
                wall, cpu, ranking = timed(
                    lambda mode=mode: analysis.top_k(
                        analysis.property_scores(query, banks, mode), 8
                    ),
                    3,
                )
                rec[f"property_{mode}_4_heads_ms"] = round(wall, 1)
                rec[f"property_{mode}_4_heads_cpu_ms"] = round(cpu, 1)
                rec[f"property_{mode}_finds_the_query_first"] = int(ranking.index[0]) == 123
            banks = None  # free the cached heads before TextSpan
            # 4. TextSpan over every stored head, each read once
            bank = rng.standard_normal((args.texts, 512)).astype(np.float32)
            bank /= np.linalg.norm(bank, axis=1, keepdims=True)
            t_read = t_ts = 0.0
            c0 = time.process_time()
            all_heads = [(lay, h) for lay in r.layers for h in range(r.n_heads)]
            for lay, h in all_heads[: args.textspan_heads]:
                t = time.perf_counter()
                x = r.coords(lay, h, cache=False)  # [image, d_head] fp32
                t_read += time.perf_counter() - t
                t = time.perf_counter()
                res = textspan(x, project_bank(bank, r.basis(lay, h)))
                t_ts += time.perf_counter() - t
                assert len(res) == 10
                del x
            rec["textspan"] = {
                "heads": min(args.textspan_heads, len(all_heads)),
                "read_s": round(t_read, 1),
                "compute_s": round(t_ts, 1),
                "total_s": round(t_read + t_ts, 1),
                "cpu_s": round(time.process_time() - c0, 1),
                "target_s": 60,
            }
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(rec, indent=2))
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"million{'' if args.images == 1_000_000 else '_' + str(args.images)}.json").write_text(
        json.dumps(rec, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
