"""`python -m engine build`: decompose an image collection into a store (resumable)."""

from __future__ import annotations

import argparse
import sys

from engine.core.layers import GRAMMAR
from engine.store import schema

NAME = "build"
HELP = "decompose every image of a folder (or synthetic:N) into a store; rerun to resume"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model spec, e.g. demo, ViT-B-32/openai")
    p.add_argument(
        "--images", required=True, help="image folder (recursive), synthetic:N[:seed] or random:N"
    )
    p.add_argument("--store", required=True, help="store path, e.g. artifacts/NAME")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument(
        "--layers",
        default=str(schema.DEFAULT_LAST_LAYERS),
        help="layers whose heads are stored: " + GRAMMAR + " (default %(default)s)",
    )
    p.add_argument("--random-weights", action="store_true", help="random init, no checkpoint")
    p.add_argument("--workers", type=int, default=2, help="image decoding threads")
    p.add_argument(
        "--image-chunk", type=int, default=None, help="images per Zarr chunk (default: automatic)"
    )
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from engine.pipeline.build import BuildParams, build_store

    params = BuildParams(
        model=args.model,
        images=args.images,
        store=args.store,
        batch_size=args.batch_size,
        device=args.device,
        layers=args.layers,
        random_weights=args.random_weights,
        workers=args.workers,
        image_chunk=args.image_chunk,
        force=args.force,
        progress=not args.no_progress,
    )
    res = build_store(params)
    if res.up_to_date:
        print(f"{res.store} is up to date ({res.n_images} images); use --force to rebuild")
        return 0
    resumed = f", resumed after {res.resumed_chunks} chunks" if res.resumed_chunks else ""
    rate = res.timings.get("images_per_s")
    print(
        f"built {res.store} -> {res.version.name}: {res.n_images} images, "
        f"{res.n_skipped} skipped{resumed}; {rate} images/s",
        file=sys.stdout,
    )
    if res.n_skipped:
        from engine.store import open_store

        with open_store(res.store) as r:
            rows = r.query("SELECT path, reason FROM skipped_files ORDER BY path LIMIT 5")
        for path, reason in rows.itertuples(index=False):
            print(f"  skipped {path}: {reason}")
        if res.n_skipped > len(rows):
            print(f"  ... {res.n_skipped - len(rows)} more (table skipped_files of the store)")
    return 0
