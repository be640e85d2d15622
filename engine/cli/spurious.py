"""`python -m engine spurious`: the heads that carry a shortcut, and a held-out-checked repair."""

from __future__ import annotations

import json

NAME = "spurious"
HELP = (
    "rank heads by the worst-group accuracy gained when each is removed and by their alignment "
    "with spurious vs core texts (fitting half only); --repair K picks up to K heads greedily "
    "and checks them on the held-out half beside K random heads"
)


def add_arguments(p):
    p.add_argument("--store", required=True, help="store link, e.g. artifacts/demo_biased")
    p.add_argument(
        "--tasks", default=None,
        help="groups (the demo world's planted shortcut: class shape, group shape/background) "
        "or FILE of path,class,group lines (Waterbirds layout); default groups on a world store",
    )  # fmt: skip
    p.add_argument("--task", default=None, help="which grouped task, if the source has several")
    p.add_argument("--spurious", default=None, metavar="TEXTS", help='e.g. "water,ocean"')
    p.add_argument("--core", default=None, metavar="TEXTS", help='e.g. "bird,feathers"')
    p.add_argument("--repair", type=int, default=0, metavar="K", help="choose up to K heads")
    p.add_argument(
        "--max-mean-drop", type=float, default=0.05,
        help="skip heads that lower the fitting half's mean accuracy by more (default 0.05)",
    )  # fmt: skip
    p.add_argument("--random", type=int, default=10, help="random-head draws for the check")
    p.add_argument("--split", type=float, default=0.5, help="share of images in the fitting half")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the random draws")
    p.add_argument("--top", type=int, default=10, help="heads to list (default 10)")
    p.add_argument("--no-write", action="store_true", help="do not record the run in the store")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from engine.core.layers import head_name
    from engine.pipeline.spurious import SpuriousParams, run_spurious

    res = run_spurious(
        SpuriousParams(
            store=args.store, tasks=args.tasks, task=args.task, spurious=args.spurious,
            core=args.core, repair=args.repair, random=args.random, split=args.split,
            seed=args.seed, max_mean_drop=args.max_mean_drop, write=not args.no_write,
        )
    )  # fmt: skip
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    s = res.split
    b = res.before
    print(
        f"task {res.task} ({len(b.names)} groups); fitting half {len(s.means) + len(s.score)} "
        f"images (means {len(s.means)}, scored {len(s.score)}), held out {len(s.held_out)}"
    )
    print(f"fitting half: worst-group {b.worst:.3f} ({b.worst_group}), mean {b.mean:.3f}")
    aligned = bool(res.spurious_texts)
    head = f"{'rank':>4} {'head':<7} {'label':<14} {'effect':>7} {'worst':>6} {'mean':>6}"
    print("heads by worst-group gain when removed alone (fitting half):")
    print(head + ("  spurious  core  align" if aligned else ""))
    for i, f in enumerate(res.findings[: args.top]):
        label = res.labels.get((f.layer, f.head), "")
        line = (
            f"{i + 1:>4} {head_name(f.layer, f.head):<7} {label[:14]:<14} {f.effect:+7.3f} "
            f"{f.worst_after:6.3f} {f.mean_after:6.3f}"
        )
        if aligned:
            line += f"  {f.spurious_share:8.3f} {f.core_share:5.3f} {f.alignment:+6.3f}"
        print(line)
    if aligned:
        top = ", ".join(head_name(f.layer, f.head) for f in res.by_alignment()[: args.top])
        print(f"most aligned with the spurious texts: {top}")
    if args.repair:
        if not res.steps:
            print("repair: no head raises the fitting half's worst-group accuracy")
            return 0
        print(f"repair (chosen on the fitting half): {res.spec}")
        h = res.held_out
        rw = h.random_worst
        rm = h.random_mean
        lift = h.after.worst - h.before.worst
        rlift = float(rw.mean()) - h.before.worst if rw.size else float("nan")
        print(
            f"held out ({len(s.held_out)} images): worst-group {h.before.worst:.3f} → "
            f"{h.after.worst:.3f} ({lift:+.3f}); mean {h.before.mean:.3f} → {h.after.mean:.3f}"
        )
        if rw.size:
            print(
                f"  {len(res.chosen)} random heads ({rw.size} draws): worst-group "
                f"{rw.mean():.3f} ({rlift:+.3f}), mean {rm.mean():.3f}"
            )
        print(
            f"reuse: python -m engine ablate --store {args.store} --tasks {res.tasks_source} "
            f"--ablate {res.spec} --seed {args.seed}"
        )
    return 0
