"""`python -m engine ablate`: zero-shot accuracy before and after mean-ablating components."""

from __future__ import annotations

import json

NAME = "ablate"
HELP = (
    "mean-ablate heads/MLPs/layers or MLP neurons (exact, from the store) and measure zero-shot "
    "accuracy"
)


def add_arguments(p):
    from engine.core.ablation_spec import VALID_FORMS
    from engine.core.neuron_spec import VALID_NEURON_FORMS

    p.add_argument("--store", required=True, help="store link, e.g. artifacts/demo")
    p.add_argument(
        "--ablate", required=True, metavar="SPEC",
        help=f"what to ablate; {VALID_FORMS}; or MLP neurons (a store built with --neurons; not "
        f"mixed with heads): {VALID_NEURON_FORMS}",
    )  # fmt: skip
    p.add_argument(
        "--tasks", default=None,
        help="factors (demo world), folders (class folders), groups (the demo world's shortcut "
        "task, with groups), FILE mapping folder,class, or FILE of path,class,group lines "
        "(default: factors when the store has them, else folders)",
    )  # fmt: skip
    p.add_argument("--random", type=int, default=10, help="random-head baseline draws (default 10)")
    p.add_argument("--split", type=float, default=0.5, help="share of images fitting the means")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the random draws")
    p.add_argument("--per-head", action="store_true", help="also each stored head alone")
    p.add_argument("--no-write", action="store_true", help="do not record the run in the store")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from engine.core.neuron_spec import is_neuron_spec
    from engine.pipeline.ablate import AblateParams, run_ablate

    params = AblateParams(
        store=args.store, ablate=args.ablate, tasks=args.tasks, random=args.random,
        split=args.split, seed=args.seed, per_head=args.per_head, write=not args.no_write,
    )  # fmt: skip
    if is_neuron_spec(args.ablate):
        from engine.cli.ablate_neurons import run_neurons

        return run_neurons(args, params)
    res = run_ablate(params)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    r = res.result
    print(
        f"ablated {len(r.ablated)} components ({args.ablate}); means over {r.n_fit} images, "
        f"evaluated on {r.n_eval} others; {len(r.random_draws)} random draws"
    )
    print(f"{'task':<14} {'before':>7} {'after':>7} {'drop':>7}   random after: mean ± sd (best)")
    for t in r.tasks:
        rnd = (
            f"{t.random_mean:.3f} ± {t.random_sd:.3f} ({t.random_best:.3f})"
            if t.random.size else "-"
        )  # fmt: skip
        print(f"{t.task:<14} {t.before:7.3f} {t.after:7.3f} {t.drop:7.3f}   {rnd}")
    if res.baseline is not None and res.baseline.note:
        print("note: " + res.baseline.note)
    if res.head_effects is not None:
        print()
        print("\n".join(per_head_lines(res.head_effects)))
    if res.groups:
        from engine.pipeline.spurious import format_groups

        print(format_groups(res.groups))
    return 0


def per_head_lines(effects) -> list[str]:
    """Each stored head ablated alone: its accuracy drop per task, one row per head."""
    from engine.core.layers import head_name

    wide = effects.pivot_table(index=["layer", "head"], columns="task", values="drop")
    wide = wide[list(dict.fromkeys(effects["task"]))]  # the tasks in their run order
    tasks = list(wide.columns)
    w = max(7, *(len(t) for t in tasks))
    out = ["per head (each head mean-ablated alone; accuracy drop per task, + = worse):",
           f"{'head':<8}" + "".join(f" {t:>{w}}" for t in tasks)]  # fmt: skip
    for (layer, head), row in wide.iterrows():
        out.append(
            f"{head_name(int(layer), int(head)):<8}" + "".join(f" {v:>+{w}.3f}" for v in row)
        )
    return out
