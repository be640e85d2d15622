"""`python -m engine demo-store`: build (once) the demo store the dashboard opens first."""

from __future__ import annotations

import argparse

NAME = "demo-store"
HELP = (
    "build the demo model's store over the synthetic world (once), interpret it, and record "
    "its causal checks (per-head ablation, segmentation against the world's masks)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help="store path (default artifacts/demo)")
    p.add_argument("--images", type=int, default=5000, help="synthetic images (default 5000)")
    p.add_argument("--seed", type=int, default=0, help="demo world seed")
    p.add_argument("--model", default=None, help="model spec (default demo)")
    p.add_argument(
        "--biased", action="store_true",
        help="the planted-shortcut demo: model demo-biased into artifacts/demo_biased, then "
        "`spurious --repair` on it (docs/spurious.md)",
    )  # fmt: skip
    p.add_argument("--repair", type=int, default=4, help="with --biased: heads to repair (4)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--force", action="store_true", help="rebuild even if complete")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from engine.errors import UserError
    from engine.pipeline.build import BuildParams, build_store
    from engine.store import open_store

    if args.images < 1:
        raise UserError(f"bad --images {args.images}: must be >= 1")
    if args.biased:
        return _biased(args)
    args.store = args.store or "artifacts/demo"
    args.model = args.model or "demo"
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
    from engine.pipeline.ablate import AblateParams, run_ablate
    from engine.pipeline.interpret import run_interpretation
    from engine.pipeline.segeval import SegEvalParams, run_segeval

    with open_store(args.store) as r:
        interpreted = r.interpreted
        ablated = r.has_rows("head_effects")
        segmented = r.has_rows("segmentation_scores")
        last = min(4, int(r.info["n_layers"]))  # the paper's "last four layers"
    if interpreted and not args.force:
        print(f"{args.store} is interpreted")
    else:
        run_interpretation(args.store, labeller="offline", bank="world")
        print(f"interpreted {args.store}")
        ablated = segmented = False
    if not ablated:
        run = run_ablate(AblateParams(args.store, f"all-but-last:{last}", per_head=True))
        kept = ", ".join(f"{t.task} {t.after:.2f}" for t in run.result.tasks)
        print(f"ablation: the last {last} layers' heads alone keep accuracy {kept}")
    if not segmented:
        seg = run_segeval(SegEvalParams(args.store, "world"), progress=not args.no_progress)
        a = seg.aggregate()
        print(f"segmentation: pointing {a['pointing']:.3f}, mIoU {a['miou']:.3f} (all heads)")
    return 0


def _biased(args: argparse.Namespace) -> int:
    from engine.pipeline.spurious import build_biased_demo

    store = args.store or "artifacts/demo_biased"
    run = build_biased_demo(
        store, images=args.images, seed=args.seed, batch_size=args.batch_size,
        force=args.force, progress=not args.no_progress, repair=args.repair,
    )  # fmt: skip
    b = run.before
    print(
        f"{store}: worst-group {b.worst:.3f} ({b.worst_group}) vs mean {b.mean:.3f} (fitting half)"
    )
    top = ", ".join(f.name for f in run.findings[:5])
    print(f"heads whose removal helps the worst group most: {top}")
    if run.held_out is not None:
        h = run.held_out
        rw = h.random_worst
        print(
            f"repair {run.spec}: held-out worst-group {h.before.worst:.3f} → {h.after.worst:.3f}, "
            f"mean {h.before.mean:.3f} → {h.after.mean:.3f}; {len(run.chosen)} random heads: "
            f"worst-group {rw.mean() if rw.size else float('nan'):.3f}"
        )
    return 0
