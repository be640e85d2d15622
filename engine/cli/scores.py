"""`python -m engine scores`: print a store's interpretation scores (and published ones)."""

from __future__ import annotations

import json
from pathlib import Path

from engine.core.labels import DEFAULT_NORMALISATION, NORMALISATIONS
from engine.errors import UserError

NAME = "scores"
HELP = "print entanglement (shared and unique) and association scores of an interpreted store"


def add_arguments(p):
    p.add_argument("--store", required=True, help="store link, e.g. artifacts/demo")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--range", dest="ranges", action="append", default=[], metavar="LO-HI",
        help="also score the stored labels over layers LO..HI (repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--normalise", "--normalize", dest="normalise", default=DEFAULT_NORMALISATION,
        choices=list(NORMALISATIONS),
        help="label normalisation for --range and the published labels "
        f"(default {DEFAULT_NORMALISATION})",
    )  # fmt: skip


def _parse_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split("-", 1))
    except ValueError:
        raise UserError(f"bad --range {text!r}: use LO-HI, e.g. 8-11") from None
    if lo > hi:
        raise UserError(f"bad --range {text!r}: LO must not exceed HI")
    return lo, hi


def _ranges(r, ranges: list[tuple[int, int]], normalise: str) -> list[dict]:
    """Scores of the stored labels over extra layer ranges (computed now, not stored)."""
    from engine.core import scores

    labels = r.head_label_rows()
    ts = r.textspan()
    cats = {k: g["category"].tolist() for k, g in ts.groupby(["layer", "head"])}
    out = []
    for lo, hi in ranges:
        sel = labels[(labels["layer"] >= lo) & (labels["layer"] <= hi)]
        if sel.empty:
            raise UserError(f"no labelled heads in layers {lo}-{hi}")
        rows = scores.score_rows(
            sel["layer"].tolist(), sel["label"].tolist(),
            [cats.get((a, b), []) for a, b in zip(sel["layer"], sel["head"], strict=True)],
            ranges=[(lo, hi)], normalise=NORMALISATIONS[normalise],
        )  # fmt: skip
        labeller = str(sel["labeller"].iloc[0])
        out += [dict(x.__dict__, labeller=labeller) for x in rows if x.scope == "range"]
    return out


def _reference(model_spec: str, normalise: str = DEFAULT_NORMALISATION) -> list[dict]:
    """Scores of the paper's published labels when the store's model is one of its six."""
    from engine.core import scores
    from engine.sources import reference

    m = reference.paper_model(model_spec)
    if m is None:
        return []
    ref = reference.reference_labels(m.arch, m.pretrained)
    rows = scores.score_rows(
        ref["layer"].tolist(), ref["label"].tolist(), None, normalise=NORMALISATIONS[normalise]
    )
    return [dict(r.__dict__, labeller="published") for r in rows]


def run(args) -> int:
    from engine.store import open_store

    if not Path(args.store).exists():
        raise UserError(f"store not found: {args.store}")
    with open_store(args.store) as r:
        df = r.score_rows()[
            ["metric", "scope", "layer_from", "layer_to", "count", "total", "value", "labeller"]
        ]
        spec = r.model_record.model_spec
        interp = r.interpretation
        random_weights = r.model_record.random_weights
        extra = (
            _ranges(r, [_parse_range(x) for x in args.ranges], args.normalise)
            if not df.empty
            else []
        )
    if df.empty:
        raise UserError(f"{args.store} has no scores yet; run `python -m engine interpret` first")
    rows = df.to_dict("records")
    rows = (
        [x for x in rows if x["scope"] == "range"]
        + extra
        + [x for x in rows if x["scope"] != "range"]
    )
    ref = [] if random_weights else _reference(spec, args.normalise)
    if args.json:
        print(json.dumps({"store": str(args.store), "model_spec": spec, "interpretation": interp,
                          "scores": rows, "published_labels": ref}, indent=2, default=str))  # fmt: skip
        return 0
    print(f"{args.store} ({spec}), labeller {rows[0]['labeller']}")
    print(f"{'scope':<7} {'layers':<7} {'metric':<21} {'count':>7} {'value':>6}")
    for row in rows + ref:
        layers = (f"{row['layer_from']}" if row["layer_from"] == row["layer_to"]
                  else f"{row['layer_from']}-{row['layer_to']}")  # fmt: skip
        scope = row["scope"] if row.get("labeller") != "published" else "paper"
        print(f"{scope:<7} {layers:<7} {row['metric']:<21} "
              f"{row['count']:>3}/{row['total']:<3} {row['value']:>6.3f}")  # fmt: skip
    if ref:
        print("(paper: the labels published with the paper's demo, case and plurals folded)")
    return 0
