"""`ablate --ablate L6N12|neurons:L6:significant|neurons:L6:top:50:TEXT`: mean-ablate MLP neurons'
second-order effects (engine.session.neuron_ablation), recorded in the store's neuron ablation
tables unless `--no-write` (engine.pipeline.ablate.run_ablate_neurons)."""

from __future__ import annotations

import json


def run_neurons(args, params) -> int:
    """The neuron form of `ablate`: `params` is the `AblateParams` the heads' form builds too."""
    from engine.pipeline.ablate import run_ablate_neurons

    run = run_ablate_neurons(params)
    if args.json:
        print(json.dumps(run.to_dict(), indent=2))
        return 0
    res = run.ablation
    layers = ", ".join(f"L{l}: {len(v)}" for l, v in res.neurons.items())
    print(
        f"ablated the second-order effects of {res.n_ablated} neurons ({layers}; {args.ablate}); "
        f"means over {res.n_fit} images, evaluated on {res.n_eval} others; {args.random} random "
        "draws of as many neurons per layer"
    )
    print(f"{'task':<14} {'before':>7} {'after':>7} {'drop':>7}   random after: mean ± sd (best)")
    for t in res.tasks:
        rnd = (
            f"{t.random_mean:.3f} ± {t.random_sd:.3f} ({t.random_best:.3f})"
            if t.random.size else "-"
        )  # fmt: skip
        print(f"{t.task:<14} {t.before:7.3f} {t.after:7.3f} {t.drop:7.3f}   {rnd}")
    if res.baseline_note:
        print("note: " + res.baseline_note)
    if run.written:
        print(f"recorded as run {run.run_id} (neuron_ablation_runs)")
    return 0
