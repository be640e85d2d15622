"""The demo store's causal targets (issue 9): per factor, ablate the heads of the last four layers
labelled with it, against as many random heads of the same layers; and the last-four-layers
experiment. Prints a markdown table (recorded in docs/causal-checks.md).

    python scripts/eval_ablation_targets.py --store artifacts/demo [--random 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.layers import head_name  # noqa: E402
from engine.pipeline.ablate import AblateParams, run_ablate  # noqa: E402
from engine.store import open_store  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="artifacts/demo")
    ap.add_argument("--random", type=int, default=10)
    ap.add_argument("--last", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with open_store(a.store) as r:
        n_layers = int(r.info["n_layers"])
        labels = r.head_labels()
        factors = r.factors()[0]
    late = range(n_layers - a.last, n_layers)
    keep = run_ablate(AblateParams(a.store, f"all-but-last:{a.last}", random=0, write=False))
    kept = {t.task: (t.before, t.after) for t in keep.result.tasks}
    out = {"n_fit": keep.result.n_fit, "n_eval": keep.result.n_eval, "last_layers_only": kept}
    # two readings: in the full model, and within the late heads' direct effects (everything
    # but the last layers' heads already mean-ablated, so the late heads are all that varies)
    for reading, base in (("full_model", ""), ("late_heads_only", f"all-but-last:{a.last}+")):
        rows, met = [], 0
        for f in factors:
            heads = sorted(h for h, lab in labels.items() if lab == f and h[0] in late)
            if not heads:
                continue
            spec = ",".join(head_name(*h) for h in heads)
            res = run_ablate(AblateParams(a.store, base + spec, random=a.random, write=False))
            start = {t: kept[t][1] for t in kept} if base else {t: kept[t][0] for t in kept}
            drops = {t.task: start[t.task] - t.after for t in res.result.tasks}
            own = res.result.task(f)
            rand_drop = start[f] - own.random_mean
            other_max = max(abs(d) for t, d in drops.items() if t != f)
            ok = drops[f] > 0 and drops[f] >= 2 * rand_drop and drops[f] > other_max
            met += ok
            rows.append({
                "factor": f, "heads": spec, "n_heads": len(heads), "start": start[f],
                "after": own.after, "drop": drops[f], "random_mean_drop": rand_drop,
                "random_sd": own.random_sd, "random_best": own.random_best,
                "largest_other_drop": other_max, "target_met": bool(ok),
            })  # fmt: skip
        out[reading] = {"factors": rows, "met": met}
    if a.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"means over {out['n_fit']} images, evaluated on {out['n_eval']} others\n")
    for reading in ("full_model", "late_heads_only"):
        print(f"**{reading}**\n")
        print("| factor | heads | accuracy → after | drop | random drop (mean ± sd) "
              "| largest other drop | ≥ 2× random, above others |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for x in out[reading]["factors"]:
            print(f"| {x['factor']} | {x['n_heads']} | {x['start']:.3f} → {x['after']:.3f} | "
                  f"{x['drop']:.3f} | {x['random_mean_drop']:.3f} ± {x['random_sd']:.3f} | "
                  f"{x['largest_other_drop']:.3f} | {'yes' if x['target_met'] else 'no'} |")  # fmt: skip
        n = len(out[reading]["factors"])
        print(f"\ntarget met for {out[reading]['met']} of {n} factors (needed: 4)\n")
    print(f"| factor | all terms | only the last {a.last} layers' heads' direct effects |")
    print("|---|---|---|")
    for f, (b, k) in kept.items():
        print(f"| {f} | {b:.3f} | {k:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
