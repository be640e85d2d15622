"""`ablate --ablate L6N12|neurons:L6:significant|neurons:L6:top:50:TEXT`: mean-ablate MLP neurons'
second-order effects (engine.session.neuron_ablation); printed, not recorded in the store."""

from __future__ import annotations

import json


def run_neurons(args) -> int:
    from engine.session import StoreSession

    with StoreSession.open(args.store) as s:
        res = s.ablate_neurons(
            args.ablate, tasks=args.tasks, random=args.random, split=args.split, seed=args.seed
        )
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
        return 0
    layers = ", ".join(f"L{l}: {len(v)}" for l, v in res.neurons.items())
    print(
        f"ablated the second-order effects of {res.n_ablated} neurons ({layers}; {args.ablate}); "
        f"means over {res.n_fit} images, evaluated on {res.n_eval} others; {args.random} random "
        "draws of as many neurons per layer"
    )
    print(f"{'task':<14} {'before':>7} {'after':>7} {'drop':>7}   random after: mean ± sd")
    for t in res.tasks:
        rnd = f"{t.random.mean():.3f} ± {t.random.std():.3f}" if t.random.size else "-"
        print(f"{t.task:<14} {t.before:7.3f} {t.after:7.3f} {t.drop:7.3f}   {rnd}")
    return 0
