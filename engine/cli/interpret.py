"""`python -m engine interpret`: TextSpan, labels, scores (and ground truth) into a store."""

from __future__ import annotations

import json
from pathlib import Path

from engine.core.labels import DEFAULT_NORMALISATION, LABELLERS, NORMALISATIONS
from engine.core.layers import GRAMMAR
from engine.errors import UserError

NAME = "interpret"
HELP = "describe every stored head with TextSpan, label it, score the labels (writes the store)"


def add_arguments(p):
    p.add_argument("--store", required=True, help="store link, e.g. artifacts/demo")
    p.add_argument("--labeller", choices=LABELLERS, default=LABELLERS[0])
    p.add_argument(
        "--bank", default=None, help="general, world or a .txt/.csv file (default: world for "
        "demo-world stores, else general)",
    )  # fmt: skip
    p.add_argument("--texts-per-head", type=int, default=10, help="TextSpan steps per head")
    p.add_argument("--rank", type=int, default=80, help="TextSpan rank r (capped at d_embed)")
    p.add_argument(
        "--layers",
        default=None,
        help="stored layers to interpret: " + GRAMMAR + " (default: every stored layer)",
    )
    p.add_argument(
        "--neurons",
        default=None,
        help="describe the MLP neurons of these built neuron layers instead of the heads ("
        + GRAMMAR
        + "; 'all': every built one): significance, direction, OMP words, label (--labeller)",
    )
    p.add_argument("--words", type=int, default=32, help="OMP words per neuron (default 32)")
    p.add_argument("--top-images", type=int, default=100, help="top images per neuron (100)")
    p.add_argument("--llm-model", default=None, help="chat model for --labeller llm")
    p.add_argument("--llm-timeout", type=float, default=30.0, help="seconds per LLM request")
    p.add_argument("--llm-retries", type=int, default=3, help="retries on 429/5xx/timeouts")
    p.add_argument(
        "--normalise", "--normalize", dest="normalise", default=DEFAULT_NORMALISATION,
        choices=list(NORMALISATIONS),
        help=f"label normalisation before scoring (default {DEFAULT_NORMALISATION})",
    )  # fmt: skip
    p.add_argument(
        "--unit-k", type=int, default=16, help="top and bottom images kept per unit (unit pages)"
    )
    p.add_argument(
        "--no-unit-maps", action="store_true",
        help="skip the per-patch maps of the unit pages' images (they run the model on 2k images "
        "per head)",
    )  # fmt: skip
    p.add_argument(
        "--unit-map-neurons", type=int, default=64,
        help="with --neurons: the most significant neurons whose unit-page images get per-patch "
        "maps (2k model forwards each; default 64)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    from engine.pipeline.interpret import run_interpretation

    if not Path(args.store).exists():
        raise UserError(f"store not found: {args.store}")
    if args.neurons:
        return run_neurons(args)
    res = run_interpretation(
        args.store,
        labeller=args.labeller,
        bank=args.bank,
        texts_per_head=args.texts_per_head,
        rank=args.rank,
        layers=args.layers,
        llm_model=args.llm_model,
        llm_timeout=args.llm_timeout,
        llm_retries=args.llm_retries,
        normalise=args.normalise,
        progress=not args.no_progress,
        unit_k=args.unit_k,
        unit_maps=not args.no_unit_maps,
    )
    summary = {
        "run_id": res.run_id,
        "labeller": res.labeller,
        "bank": res.bank,
        "layers": res.layers,
        "heads": res.n_heads,
        "scores": {s.metric: f"{s.count}/{s.total}" for s in res.scores if s.scope == "range"},
        "timings": res.timings,
    }
    if res.clear_heads and res.comparable:
        summary["ground_truth"] = {
            "clear_heads": res.clear_heads,
            "matched": res.matched_heads,
            "match_rate": round(res.match_rate, 3),
        }
    labels = _label_summary(args.store)
    summary["labels"] = labels.to_dict()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"interpreted {res.n_heads} heads (layers {res.layers}) with {res.labeller} labels, "
          f"bank {res.bank}; run {res.run_id[:12]}")  # fmt: skip
    for metric, v in summary["scores"].items():
        print(f"  {metric:<22} {v}")
    if res.clear_heads and not res.comparable:
        print(f"  ground truth: bank {res.bank} does not name the world factors; use --bank world")
    elif res.clear_heads:
        print(f"  ground truth: {res.matched_heads}/{res.clear_heads} heads with a clear "
              f"dominant factor are labelled with it ({res.match_rate:.0%})")  # fmt: skip
    print("\n".join(labels.lines()))
    print(f"(python -m engine heads --store {args.store} lists each head's label and texts)")
    return 0


def _label_summary(store):
    """Heads per label of the interpretation just written, with a note when most are mixed."""
    from engine.core.label_summary import summarise_labels
    from engine.session import StoreSession

    with StoreSession.open(store) as s:
        labs = list(s.head_labels().values())
        return summarise_labels(labs, random_weights=bool(s.model_record.random_weights))


def run_neurons(args) -> int:
    from engine.pipeline.neuron_interpret import run_neuron_interpretation

    spec = None if args.neurons.strip().lower() == "all" else args.neurons
    res = run_neuron_interpretation(
        args.store, spec, args.bank, top=args.top_images, n_words=args.words,
        progress=not args.no_progress, unit_k=args.unit_k,
        unit_map_neurons=0 if args.no_unit_maps else args.unit_map_neurons,
        labeller=args.labeller, llm_model=args.llm_model, llm_timeout=args.llm_timeout,
        llm_retries=args.llm_retries,
    )  # fmt: skip
    summary = {
        "run_id": res.run_id,
        "labeller": res.labeller,
        "neuron_layers": res.layers,
        "neurons_per_layer": res.n_neurons,
        "bank": res.bank,
        "timings": res.timings,
    }
    if res.clear:
        summary["ground_truth"] = {
            "clear_neurons": res.clear, "matched": res.matched,
            "match_rate": round(res.match_rate, 3),
        }  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"described {res.n_neurons} neurons x layers {res.layers} with {res.labeller} labels "
          f"(bank {res.bank}) in "
          f"{res.timings['total_s']:.1f} s; run {res.run_id[:12]}")  # fmt: skip
    if res.clear:
        print(f"  ground truth: {res.matched}/{res.clear} neurons with one factor's "
              f"η² >= 0.5 are labelled with it ({res.match_rate:.0%})")  # fmt: skip
    return 0
