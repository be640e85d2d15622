"""The planted shortcut's targets (issue 17) on a biased demo store: worst-group vs mean accuracy,
whether the finder ranks the background-carrying heads first, and whether the held-out repair
beats random heads. Prints markdown (recorded in docs/spurious.md and docs/causal-checks.md).

    python -m engine demo-store --biased
    python scripts/eval_spurious_targets.py --store artifacts/demo_biased [--repair 4] [--seeds 5]

"Background heads" are the ground truth: heads whose direct contribution has background η² at
least 0.5 (`engine.core.groundtruth`, over every stored image).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.core.groundtruth import CLEAR_ETA2, eta2  # noqa: E402
from engine.pipeline.spurious import SpuriousParams, run_spurious  # noqa: E402
from engine.sources import world  # noqa: E402
from engine.store import open_store  # noqa: E402


def background_eta2(store: str) -> dict[str, tuple[float, float]]:
    """Per stored head: (η² of the spurious factor, η² of the core factor) over every image."""
    out = {}
    with open_store(store) as r:
        names, codes = r.factors()
        k_sp, k_core = names.index(world.BIAS.spurious), names.index(world.BIAS.core)
        for layer in r.layers:
            for h in range(r.n_heads):
                c = r.head_out(layer, h)  # [image, d_embed]
                out[f"L{layer}H{h}"] = (eta2(c, codes[:, k_sp]), eta2(c, codes[:, k_core]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--store", default="artifacts/demo_biased")
    ap.add_argument("--repair", type=int, default=4)
    ap.add_argument("--random", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=5, help="splits to repeat the check over")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    truth = background_eta2(a.store)
    bg_heads = {n for n, (e, _) in truth.items() if e >= CLEAR_ETA2}
    rows = []
    for seed in range(a.seeds):
        run = run_spurious(
            SpuriousParams(a.store, tasks="groups", repair=a.repair, random=a.random, seed=seed,
                           write=False)
        )  # fmt: skip
        by_effect = [f.name for f in run.findings]
        by_align = [f.name for f in run.by_alignment()]
        k = max(len(bg_heads), 1)
        h = run.held_out
        lift = h.after.worst - h.before.worst if h else float("nan")
        rlift = float(h.random_worst.mean()) - h.before.worst if h and h.random else float("nan")
        rows.append({
            "seed": seed,
            "fit_worst": run.before.worst, "fit_mean": run.before.mean,
            "fit_worst_group": run.before.worst_group,
            "top_effect": by_effect[:5], "top_alignment": by_align[:5],
            "bg_in_top_effect": len(set(by_effect[:k]) & bg_heads) / k,
            "bg_in_top_alignment": len(set(by_align[:k]) & bg_heads) / k,
            "top1_effect_is_bg": by_effect[0] in bg_heads,
            "top1_alignment_is_bg": by_align[0] in bg_heads,
            "spec": run.spec, "chosen_bg": sum(n in bg_heads for n in run.chosen),
            "held_worst_before": h.before.worst if h else None,
            "held_worst_after": h.after.worst if h else None,
            "held_mean_before": h.before.mean if h else None,
            "held_mean_after": h.after.mean if h else None,
            "random_worst": float(h.random_worst.mean()) if h and h.random else None,
            "random_mean": float(h.random_mean.mean()) if h and h.random else None,
            "lift": lift, "random_lift": rlift,
            "lift_ok": bool(lift >= 2 * max(rlift, 0.0) and lift > 0),
            "mean_ok": bool(h and abs(h.after.mean - h.before.mean) <= 0.05),
        })  # fmt: skip
    out = {
        "store": a.store,
        "background_heads": sorted(bg_heads),
        "eta2": {n: [round(x, 3) for x in v] for n, v in truth.items()},
        "runs": rows,
    }
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"background heads (η² ≥ {CLEAR_ETA2}): {', '.join(sorted(bg_heads)) or 'none'}\n")
    print(
        "| seed | fitting half: worst-group / mean | top 3 by effect | top 3 by alignment | "
        f"bg heads in top {len(bg_heads)} (effect, alignment) | repair | held-out worst-group "
        "before → after | K random heads | held-out mean before → after | lift ≥ 2× random | "
        "mean within 5 pts |"
    )
    print("|---" * 11 + "|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['fit_worst']:.3f} / {r['fit_mean']:.3f} | "
            f"{', '.join(r['top_effect'][:3])} | {', '.join(r['top_alignment'][:3])} | "
            f"{r['bg_in_top_effect']:.2f}, {r['bg_in_top_alignment']:.2f} | {r['spec']} | "
            f"{r['held_worst_before']:.3f} → {r['held_worst_after']:.3f} | "
            f"{r['random_worst']:.3f} | {r['held_mean_before']:.3f} → {r['held_mean_after']:.3f} | "
            f"{'yes' if r['lift_ok'] else 'no'} ({r['lift']:+.3f} vs {r['random_lift']:+.3f}) | "
            f"{'yes' if r['mean_ok'] else 'no'} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
