"""`python -m engine heads`: every interpreted head with its label and top TextSpan texts."""

from __future__ import annotations

import difflib
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
    from engine.store import open_store
    from engine.store.heads import head_table

    if not Path(args.store).exists():
        raise UserError(f"store not found: {args.store}")
    if args.texts < 0:
        raise UserError("--texts must be 0 or more")
    with open_store(args.store) as r:
        table = head_table(r)
        random_weights = bool(r.info.get("random_weights"))
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
            close = difflib.get_close_matches(args.label.lower(), valid, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(
                f"no head is labelled {args.label!r}{hint}; labels in this store: "
                + ", ".join(valid)
            )
        table = table[keep]
    if args.json:
        print(json.dumps(table.to_dict(orient="records"), indent=2))
        return 0
    lw = max(len("label"), *(len(x) for x in table["label"]))
    bw = max(len("labeller"), *(len(x) for x in table["labeller"]))
    print(f"{'head':<7} {'label':<{lw}}  {'labeller':<{bw}}  top texts (share of variance)")
    for row in table.itertuples(index=False):
        shown = " · ".join(
            f"{t['text']} ({t['variance_removed']:.2f})" for t in row.texts[: args.texts]
        )
        print(f"{row.name:<7} {row.label:<{lw}}  {row.labeller:<{bw}}  {shown}")
    if args.label is None:
        s = summarise_labels(table["label"].tolist(), random_weights=random_weights)
        print()
        print("\n".join(s.lines()))
    return 0
