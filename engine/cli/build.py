"""`python -m engine build`: decompose an image collection into a store (resumable)."""

from __future__ import annotations

import argparse
import sys

from engine import store
from engine.core.layers import GRAMMAR
from engine.errors import UserError
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
    p.add_argument(
        "--neurons",
        default=None,
        help="MLP layers whose neurons' second-order effects are stored (docs/decomposition.md): "
        + GRAMMAR
        + ", e.g. 8-10, or 9-9 for one layer (default: none)",
    )
    p.add_argument("--workers", type=int, default=2, help="image decoding threads")
    p.add_argument(
        "--image-chunk", type=int, default=None, help="images per Zarr chunk (default: automatic)"
    )
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("scale-out (docs/scale-out.md)")
    g.add_argument(
        "--shard",
        metavar="I/N",
        default=None,
        help="compute only chunks k with k %% N == I (0 <= I < N) into the shared staging folder; "
        "the shard that finds every chunk done publishes",
    )
    g.add_argument(
        "--finalise",
        "--finalize",
        dest="finalise",
        action="store_true",
        help="publish a build whose chunks all ran as shards (refuses when chunks are missing)",
    )
    g.add_argument("--executor", choices=["local", "ray"], default="local")
    g.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: local)")
    g.add_argument("--num-workers", type=int, default=2, help="Ray actors (default %(default)s)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray actor")
    g.add_argument(
        "--threads-per-worker",
        type=int,
        default=None,
        help="torch threads per Ray actor (default: this process's count, which keeps the "
        "store bit-identical to a single-process build on the same CPU)",
    )


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise UserError(f"bad --shard {text!r}: use I/N with 0 <= I < N, e.g. 0/4") from None
    return i, n


def run(args: argparse.Namespace) -> int:
    from engine.pipeline.build import BuildParams, build_store, finalise_build

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
        neurons=args.neurons,
    )
    chosen = {
        "--shard": args.shard,
        "--finalise": args.finalise,
        "--executor ray": args.executor == "ray",
    }
    modes = [name for name, on in chosen.items() if on]
    if len(modes) > 1:
        raise UserError(f"{' and '.join(modes)} cannot be combined")
    if args.executor == "ray":
        from engine.pipeline.distributed import RayOptions, build_with_ray

        opts = RayOptions(
            args.ray_address,
            args.num_workers,
            args.gpus_per_worker,
            threads_per_worker=args.threads_per_worker,
        )
        res = build_with_ray(params, opts)
    elif args.finalise:
        res = finalise_build(params)
    else:
        shard = parse_shard(args.shard) if args.shard else None
        res = build_store(params, shard=shard)
        if not res.published:
            n_done = len(store.recorded_chunks(store.staging_dir(args.store, res.key)))
            print(
                f"shard {args.shard}: {res.chunks_done} chunks computed ({res.n_images} images), "
                f"{res.resumed_chunks} already done; {n_done} of {res.n_chunks} chunks of the "
                "build recorded; the last shard (or --finalise) publishes"
            )
            return 0
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
            rows = r.skipped_files(limit=5)
        for path, reason in rows.itertuples(index=False):
            print(f"  skipped {path}: {reason}")
        if res.n_skipped > len(rows):
            print(f"  ... {res.n_skipped - len(rows)} more (table skipped_files of the store)")
    return 0
