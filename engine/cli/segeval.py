"""`python -m engine segeval`: score per-head topic segmentation against ground-truth masks."""

from __future__ import annotations

from engine.errors import UserError

NAME = "segeval"
HELP = "score each stored head's segmentation maps against object masks (world or a folder)"


def add_arguments(p):
    p.add_argument("--store", required=True, help="store link, e.g. artifacts/demo")
    p.add_argument(
        "--masks", required=True,
        help="'world' (held-out demo-world images and their masks) or a folder of mask PNGs",
    )  # fmt: skip
    p.add_argument("--images", help="with --masks DIR: the image folder the masks belong to")
    p.add_argument("--text", help="with --masks DIR: the text to segment (default: the class)")
    p.add_argument("--n-images", type=int, default=200, help="with --masks world (default 200)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="SPEC",
        help="also score a head set: L10H3,L11H7, label:LABEL or layers:8-11 (repeatable)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-progress", action="store_true")


def _head_sets(store: str, specs: list[str]) -> dict[str, list[tuple[int, int]]]:
    """Each --set in the ablation spec language (heads, label:, layers:), as its stored heads."""
    from engine.core.ablation_spec import parse_ablation_spec
    from engine.core.layers import parse_head_name
    from engine.session import StoreSession

    if not specs:
        return {}
    with StoreSession.open(store) as s:
        heads, labels, n_layers, layers = (
            s.heads(),
            s.head_labels(),
            s.model_record.n_layers,
            s.layers,
        )
    out = {}
    for spec in specs:
        names = parse_ablation_spec(spec, heads, labels, n_layers, stored_layers=layers)
        try:
            out[spec] = [parse_head_name(n) for n in names]
        except UserError:
            raise UserError(
                f"bad --set {spec!r}: a set holds heads only (L10H3, label:, layers:)"
            ) from None
    return out


def run(args) -> int:
    from engine.pipeline.segeval import SegEvalParams, run_segeval, summary_json

    params = SegEvalParams(
        store=args.store,
        masks=args.masks,
        images=args.images,
        text=args.text,
        n_images=args.n_images,
        batch_size=args.batch_size,
        head_sets=_head_sets(args.store, args.sets),
    )
    res = run_segeval(params, progress=not args.no_progress)
    if args.json:
        print(summary_json(res))
        return 0
    agg = res.aggregate()
    heads = res.rows[res.rows["scope"] == "head"].sort_values("pointing", ascending=False)
    print(
        f"segmentation over {agg['n_images']} images ({res.source}, text: {res.text}); "
        f"all stored heads: pointing {agg['pointing']:.3f}, mIoU {agg['miou']:.3f}, "
        f"mAP {agg['map']:.3f}, pixel acc {agg['pixel_acc']:.3f}"
    )
    for row in res.rows[res.rows["scope"] == "set"].itertuples():
        print(f"  set {row.name}: pointing {row.pointing:.3f}, mIoU {row.miou:.3f}")
    print("  best heads by pointing: " + ", ".join(
        f"{r.name} {r.pointing:.2f}" for r in heads.head(5).itertuples()
    ))  # fmt: skip
    return 0
