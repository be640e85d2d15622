"""`visualise`: a synthesized input image per head (MACO-style), stored with the store."""

from __future__ import annotations

import json
from pathlib import Path

from engine.core import visualise as vis
from engine.errors import UserError

NAME = "visualise"
HELP = (
    "optimise an input image per unit (head or neuron) to maximise its effect along its "
    "direction (Fourier phase, fixed 1/f magnitude) and store it (needs interpret first)"
)


def add_arguments(p):
    p.add_argument("--store", required=True, help="store link, e.g. artifacts/demo")
    p.add_argument(
        "--units", required=True,
        help="units, in the ablate spec language: heads L7H3,L7H5 | label:colour | layers:6-7, "
        "or neurons L6N12 | neurons:L6:top:8 | neurons:L6:significant",
    )  # fmt: skip
    p.add_argument("--steps", type=int, default=vis.DEFAULT_STEPS, help="optimisation steps")
    p.add_argument("--lr", type=float, default=vis.DEFAULT_LR, help="Adam learning rate")
    p.add_argument("--views", type=int, default=vis.DEFAULT_VIEWS, help="augmented views a step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args) -> int:
    from engine.pipeline.visualise import run_visualise

    if not Path(args.store).exists():
        raise UserError(f"store not found: {args.store}")
    rows = run_visualise(
        args.store, args.units, steps=args.steps, lr=args.lr, views=args.views, seed=args.seed,
        progress=not args.no_progress,
    )  # fmt: skip
    out = [
        {"unit": r.name, "objective": round(r.objective, 5),
         "random_fourier": [round(r.init_mean, 5), round(r.init_sd, 5)],
         "noise": [round(r.noise_mean, 5), round(r.noise_sd, 5)],
         "store_max": round(r.store_max, 5), "sd_above_random": round(r.sigmas_above_init, 1)}
        for r in rows
    ]  # fmt: skip
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for o in out:
            print(
                f"{o['unit']}: objective {o['objective']:.4g} (random Fourier images "
                f"{o['random_fourier'][0]:.3g} ± {o['random_fourier'][1]:.2g}, "
                f"{o['sd_above_random']} sd above; best stored image {o['store_max']:.4g})"
            )
    return 0
