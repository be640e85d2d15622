"""`python -m engine demo-store`: build (once) the demo store the dashboard opens first."""

from __future__ import annotations

import argparse

NAME = "demo-store"
HELP = (
    "build the demo model's store over the synthetic world (once), interpret it, and record "
    "its causal checks (per-head ablation, segmentation against the world's masks), describe "
    "one layer's MLP neurons (second-order lens) and synthesize an image per labelled head and "
    "for its most significant neurons"
)
NEURON_LAYER = 6  # the demo model's neuron layer (docs/benchmarks.md, "Neurons")
VISUALISE_STEPS = 32  # optimisation steps per head in the demo (visualise's default: 256)
VISUALISE_LAST = 1  # the labelled heads of the last layer get a synthesized image (~25 s each)
VISUALISE_NEURONS = 4  # the most significant neurons of each neuron layer get one too


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
    p.add_argument(
        "--neurons", default="auto",
        help=f"MLP layers whose neurons are stored and described (default auto: layer "
        f"{NEURON_LAYER} of the demo model, none for another --model; none: skip)",
    )  # fmt: skip
    p.add_argument(
        "--visualise-steps", type=int, default=VISUALISE_STEPS,
        help=f"visualise steps per labelled head (default {VISUALISE_STEPS}; 0: skip)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--force", action="store_true", help="rebuild even if complete")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from engine.errors import UserError
    from engine.pipeline.build import BuildParams, build_store
    from engine.store import open_store, unit_tables

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
        neurons=_neurons(args.neurons, args.model),
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
        neuron_layers = list(r.info.get("neuron_layers") or [])
        # described, with the unit pages' rows (a demo store made before neurons were units
        # is described again: the neuron pass is seconds)
        described = r.has_rows("neuron_stats") and not unit_tables.unit_summary(r, "neuron").empty
    if interpreted and not args.force:
        print(f"{args.store} is interpreted")
    else:
        run_interpretation(args.store, labeller="offline", bank="world")
        print(f"interpreted {args.store}")
        ablated = segmented = described = False
    if not ablated:
        run = run_ablate(AblateParams(args.store, f"all-but-last:{last}", per_head=True))
        kept = ", ".join(f"{t.task} {t.after:.2f}" for t in run.result.tasks)
        print(f"ablation: the last {last} layers' heads alone keep accuracy {kept}")
    if not segmented:
        seg = run_segeval(SegEvalParams(args.store, "world"), progress=not args.no_progress)
        a = seg.aggregate()
        print(f"segmentation: pointing {a['pointing']:.3f}, mIoU {a['miou']:.3f} (all heads)")
    if neuron_layers and not described:
        _describe_neurons(args)
    if args.visualise_steps > 0:
        _visualise(args)
        if neuron_layers:
            _visualise_neurons(args, neuron_layers)
    return 0


def _neurons(spec: str | None, model: str) -> str | None:
    """The --neurons spec to build: `auto` is the demo model's measured layer (another model's
    layers differ: none unless named)."""
    if spec is not None and spec.strip().lower() == "auto":
        return f"{NEURON_LAYER}-{NEURON_LAYER}" if model == "demo" else None
    return None if spec is None or spec.strip().lower() in ("", "none") else spec


def _describe_neurons(args: argparse.Namespace) -> None:
    from engine.pipeline.neuron_interpret import run_neuron_interpretation

    res = run_neuron_interpretation(args.store, None, "world", progress=not args.no_progress)
    print(
        f"described {res.n_neurons} neurons x layers {res.layers} in "
        f"{res.timings.get('total_s')} s; ground truth {res.matched}/{res.clear} clear neurons "
        "labelled with their factor"
    )


def visualise_spec(labels: dict, n_layers: int, last: int = VISUALISE_LAST) -> str | None:
    """The demo's labelled heads (label other than `mixed`) of the last `last` layers, as a
    spec; None when there are none."""
    from engine.core.labels import MIXED
    from engine.core.layers import head_name

    heads = sorted(k for k, v in labels.items() if k[0] >= n_layers - last and v and v != MIXED)
    return ",".join(head_name(l, h) for l, h in heads) or None


def _visualise(args: argparse.Namespace) -> None:
    from engine.pipeline.visualise import run_visualise
    from engine.store import open_store, unit_tables

    with open_store(args.store) as r:
        spec = visualise_spec(r.head_labels(), int(r.info["n_layers"]))
        done = len(unit_tables.unit_visualisations(r)) > 0
    if spec is None or (done and not args.force):
        return
    rows = run_visualise(
        args.store, spec, steps=args.visualise_steps, progress=not args.no_progress
    )
    above = sum(x.sigmas_above_init > 3 for x in rows)
    print(
        f"visualised {len(rows)} labelled heads ({args.visualise_steps} steps): {above} score "
        "> 3 sd above random Fourier images"
    )


def _visualise_neurons(args: argparse.Namespace, layers: list[int]) -> None:
    """Synthesized images for the VISUALISE_NEURONS most significant neurons of each layer."""
    import time

    from engine.pipeline.visualise import run_visualise
    from engine.store import open_store, unit_tables

    with open_store(args.store) as r:
        done = (unit_tables.unit_visualisations(r)["unit"].str.contains("N")).any()
    if done and not args.force:
        return
    spec = ",".join(f"neurons:L{l}:top:{VISUALISE_NEURONS}" for l in layers)
    t = time.perf_counter()
    rows = run_visualise(
        args.store, spec, steps=args.visualise_steps, progress=not args.no_progress
    )
    above = sum(x.sigmas_above_init > 3 for x in rows)
    print(
        f"visualised the {len(rows)} most significant neurons ({args.visualise_steps} steps, "
        f"{time.perf_counter() - t:.0f} s): {above} score > 3 sd above random Fourier images"
    )


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
