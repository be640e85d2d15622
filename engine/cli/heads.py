"""`python -m engine heads`: every interpreted head with its label and top TextSpan texts."""

from __future__ import annotations

import json
from pathlib import Path

from engine.errors import UserError

NAME = "heads"
HELP = "list the interpreted heads: label, labeller and top texts (read-only)"


def add_arguments(p):
    p.add_argument("--store", required=True, help="store link, e.g. artifacts/demo")
    p.add_argument(
        "--label", default=None,
        help="only heads with this label (case and plurals folded, e.g. colours = colour)",
    )  # fmt: skip
    p.add_argument("--texts", type=int, default=3, help="texts shown per head (default 3)")
    p.add_argument("--json", action="store_true", help="every head and all its texts as JSON")


def run(args) -> int:
    from engine.core.label_summary import summarise_labels
    from engine.core.labels import normalise_label
    from engine.model.discovery import did_you_mean
    from engine.session import StoreSession

    if not Path(args.store).exists():
        raise UserError(f"store not found: {args.store}")
    if args.texts < 0:
        raise UserError("--texts must be 0 or more")
    with StoreSession.open(args.store) as s:
        table = s.heads_table(texts=args.texts if not args.json else 10**6)
        random_weights = bool(s.model_record.random_weights)
    table = table[table["label"].notna()]
    if table.empty:
        raise UserError(
            f"{args.store} has no head labels yet; run `python -m engine interpret --store "
            f"{args.store}` first"
        )
    if args.label is not None:
        want = normalise_label(args.label)
        keep = table["label"].map(normalise_label) == want
        if not keep.any():
            valid = sorted(set(table["label"]))
            raise UserError(
                f"no head is labelled {args.label!r}{did_you_mean(args.label, valid)}; labels "
                "in this store: " + ", ".join(valid)
            )
        table = table[keep]
    if args.json:
        rows = json.loads(table.to_json(orient="records"))  # NaN -> null
        for row in rows:
            row["top_texts"] = [{"text": t, "variance_removed": v} for t, v in row["top_texts"]]
        print(json.dumps(rows, indent=2))
        return 0
    lw = max(len("label"), *(len(x) for x in table["label"]))
    bw = max(len("labeller"), *(len(x) for x in table["labeller"]))
    print(f"{'head':<7} {'label':<{lw}}  {'labeller':<{bw}}  top texts (share of variance)")
    for row in table.itertuples(index=False):
        shown = " · ".join(f"{t} ({v:.2f})" for t, v in row.top_texts)
        print(f"{row.name:<7} {row.label:<{lw}}  {row.labeller:<{bw}}  {shown}")
    if args.label is None:
        print()
        print(
            "\n".join(
                summarise_labels(table["label"].tolist(), random_weights=random_weights).lines()
            )
        )
    return 0
