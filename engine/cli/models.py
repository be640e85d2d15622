"""`python -m engine models`: the registry's models and whether their weights are on this machine."""

from __future__ import annotations

import json
import textwrap

NAME = "models"
HELP = "list known models and which are available locally"


def add_arguments(p):
    p.add_argument(
        "--all", action="store_true", help="also list every open_clip ViT architecture/tag"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from engine.model import ModelEntry, list_models, list_open_clip_vits
    from engine.sources.reference import paper_models

    paper = [
        ModelEntry(m.name, m.spec, f"paper model; {m.training_data}", paper=True)
        for m in paper_models()
    ]
    from engine.model.discovery import random_weight_architectures

    rows = list_models(paper)
    if args.all:
        rows += list_open_clip_vits()
    archs = random_weight_architectures()
    verify_only = [a for a in random_weight_architectures(stores=False) if a not in archs]
    if args.json:
        rows += [
            {"name": a, "spec": a, "paper": False, "available": True, "where": "random init",
             "random_weights": True, "stores": a in archs,
             "description": "architecture; decomposable, with --random-weights"
             + ("" if a in archs else " (verify only: attention pooling, no stores yet)")}
            for a in archs + verify_only
        ]  # fmt: skip
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["spec"]) for r in rows)
    for r in rows:
        mark = "available" if r["available"] else "download needed"
        paper = " [paper]" if r.get("paper") else ""
        print(f"{r['spec']:<{width}}  {mark:<15}  {r['description']}{paper}")
        if r["available"] and r["where"]:
            print(f"{'':<{width}}  {'':<15}  at {r['where']}")
    print(
        f"\nArchitectures usable with --random-weights ({len(archs)}; decomposable, no download):"
    )
    print(_wrap(archs))
    if verify_only:
        print(f"\nAttention-pooled, `verify --model` only for now ({len(verify_only)}):")
        print(_wrap(verify_only))
    print(
        "\nOther specs: ARCH:/path/to/weights.safetensors, local-dir:/path, hf-hub:org/repo, "
        "or ARCH with --random-weights."
    )
    return 0


def _wrap(names: list[str]) -> str:
    return textwrap.fill(", ".join(names), width=100, initial_indent="  ",
                         subsequent_indent="  ", break_on_hyphens=False)  # fmt: skip
