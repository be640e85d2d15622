"""`python -m engine verify`: check that the decomposition sums to `encode_image` for a model."""

from __future__ import annotations

import json

import torch

from engine.core.layers import GRAMMAR
from engine.errors import UserError

NAME = "verify"
HELP = "check that per-head contributions + MLP/embedding/bias terms sum to encode_image"


def add_arguments(p):
    p.add_argument("--model", required=True, help="model spec, e.g. ViT-B-32/openai or demo")
    p.add_argument("--random-weights", action="store_true", help="random init, no checkpoint")
    p.add_argument("--images", help="folder of images (default: random pixels)")
    p.add_argument("-n", "--n-images", type=int, default=4, help="images to check (default 4)")
    p.add_argument(
        "--layers",
        default="all",
        help="layers whose heads are decomposed: " + GRAMMAR + " (default all)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--json", action="store_true")


def _pixels(lm, folder: str | None, n: int) -> tuple[torch.Tensor, str]:
    if not folder:
        g = torch.Generator().manual_seed(0)
        s = lm.dims.image_size
        return torch.randn(n, 3, s, s, generator=g), f"{n} random-pixel images"
    from pathlib import Path

    from engine.sources.imageio import ImageRejected, decode_file, discover

    if not Path(folder).is_dir():
        raise UserError(f"image folder not found: {folder}")
    images = []
    for path in discover(folder):
        try:
            images.append(lm.preprocess(decode_file(path).image))
        except ImageRejected:
            continue
        if len(images) == n:
            break
    if not images:
        raise UserError(f"no readable images under {folder}")
    return torch.stack(images), f"{len(images)} images from {folder}"


def run(args) -> int:
    from engine.core.layers import parse_layers
    from engine.model import decompose_images, load_model

    if args.n_images < 1:
        raise UserError("--n-images must be at least 1")
    lm = load_model(args.model, device=args.device, random_weights=args.random_weights)
    layers = parse_layers(args.layers, lm.dims.n_layers)
    pixels, source = _pixels(lm, args.images, args.n_images)
    d = decompose_images(lm, pixels, layers)
    rem = d.remainder()
    result = {
        "model": args.model,
        "weights": "random" if args.random_weights else lm.weights_hash,
        "images": source,
        "n_components": len(d.components()[0]),
        "max_abs_error": float(rem.abs().max()),
        "max_output_norm": float(d.output.norm(dim=-1).max()),
        "relative_error": d.relative_error(),
        "tolerance": args.tolerance,
    }
    result["ok"] = result["relative_error"] < args.tolerance
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        status = "OK" if result["ok"] else "FAILED"
        print(
            f"{status}: {result['n_components']} components over {source} sum to encode_image "
            f"with max |error| / max ||output|| = {result['relative_error']:.2e} "
            f"(max |error| {result['max_abs_error']:.2e}; tolerance {args.tolerance:g})"
        )
    return 0 if result["ok"] else 1
