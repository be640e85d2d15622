"""`python -m engine demo-store`: build (once) the demo store the dashboard opens first."""

from __future__ import annotations

import argparse
import importlib.util

NAME = "demo-store"
HELP = "build the demo model's store over the synthetic world (once) and interpret it"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="artifacts/demo", help="store path (default %(default)s)")
    p.add_argument("--images", type=int, default=5000, help="synthetic images (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="demo world seed")
    p.add_argument("--model", default="demo", help="model spec (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--force", action="store_true", help="rebuild even if complete")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from engine.errors import UserError
    from engine.pipeline.build import BuildParams, build_store
    from engine.store import open_store

    if args.images < 1:
        raise UserError(f"bad --images {args.images}: must be >= 1")
    params = BuildParams(
        model=args.model,
        images=f"synthetic:{args.images}:{args.seed}",
        store=args.store,
        batch_size=args.batch_size,
        layers="all",
        force=args.force,
        progress=not args.no_progress,
    )
    res = build_store(params)
    if res.up_to_date:
        print(f"{args.store} exists and is complete ({res.n_images} images)")
    else:
        print(f"built {args.store}: {res.n_images} images ({res.timings.get('images_per_s')}/s)")
    with open_store(args.store) as r:
        interpreted = r.interpreted
    if interpreted and not args.force:
        print(f"{args.store} is interpreted")
        return 0
    if importlib.util.find_spec("engine.pipeline.interpret") is None:
        print(
            "note: engine.pipeline.interpret is not available yet; the store is built but not interpreted"
        )
        return 0
    from engine.pipeline.interpret import run_interpretation

    run_interpretation(args.store, labeller="offline", bank="world")
    print(f"interpreted {args.store}")
    return 0
