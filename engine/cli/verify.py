"""`python -m engine verify`: check that the decomposition sums to `encode_image`.

`--model SPEC`: decompose a few images now (fp32) and compare with the model's own forward.
`--store S`: sum every image's stored terms (fp16 coordinates, MLP, rest-attention and embedding
terms; fp32 constants) and compare with the stored `output`, against the fp16 rounding bound of
`engine.core.reconstruct` (OK when every image's error is within its bound).
"""

from __future__ import annotations

import json

import torch

from engine.core.layers import GRAMMAR
from engine.errors import UserError

NAME = "verify"
HELP = "check that per-head contributions + MLP/embedding/bias terms sum to encode_image"


def add_arguments(p):
    p.add_argument("--model", help="model spec, e.g. ViT-B-32/openai or demo")
    p.add_argument("--store", help="check a built store's stored terms instead of a model")
    p.add_argument("--random-weights", action="store_true", help="random init, no checkpoint")
    p.add_argument("--images", help="folder of images (default: random pixels)")
    p.add_argument("-n", "--n-images", type=int, default=4, help="images to check (default 4)")
    p.add_argument(
        "--layers",
        default="all",
        help="layers whose heads are decomposed: " + GRAMMAR + " (default all)",
    )
    p.add_argument(
        "--neurons",
        default=None,
        help="also check the second-order neuron lens "
        "of these MLP layers (" + GRAMMAR + ") against a brute-force propagation",
    )
    p.add_argument(
        "--check-neurons",
        type=int,
        default=8,
        help="neurons per layer checked "
        "one by one (and always the sum over all of them; default 8)",
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
    if bool(args.model) == bool(args.store):
        raise UserError("give exactly one of --model SPEC or --store PATH")
    if args.store:
        return run_store(args)
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
    if hasattr(d, "pool_mlp_share"):  # attention pooling (SigLIP): the one nonlinear term
        result["pool_mlp_share"] = float(d.pool_mlp_share().mean())
    result["ok"] = result["relative_error"] < args.tolerance
    neuron_layers = _neuron_layers(args, lm)
    if neuron_layers:
        from engine.pipeline.neurons import verify_model_neurons

        nres = verify_model_neurons(lm, d_weights(lm), pixels, neuron_layers, args.check_neurons)
        result.update(nres)
        result["ok"] = result["ok"] and max(
            nres["neuron_relative_error"], nres["neuron_sum_relative_error"]
        ) < min(args.tolerance, 1e-5)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        status = "OK" if result["ok"] else "FAILED"
        print(
            f"{status}: {result['n_components']} components over {source} sum to encode_image "
            f"with max |error| / max ||output|| = {result['relative_error']:.2e} "
            f"(max |error| {result['max_abs_error']:.2e}; tolerance {args.tolerance:g})"
        )
        if neuron_layers:
            print(
                f"neurons {result['neuron_layers']}: factorised second-order effects vs brute "
                f"force through the model's modules: max |error| / max ||effect|| = "
                f"{result['neuron_relative_error']:.2e} ({args.check_neurons} neurons per layer), "
                f"{result['neuron_sum_relative_error']:.2e} for the sum over all neurons "
                "(tolerance 1e-05)"
            )
    return 0 if result["ok"] else 1


def _neuron_layers(args, lm) -> list[int]:
    if not getattr(args, "neurons", None):
        return []
    from engine.pipeline.neurons import parse_neuron_layers

    if args.check_neurons < 1:
        raise UserError("--check-neurons must be at least 1")
    return parse_neuron_layers(args.neurons, lm.dims.n_layers)


def d_weights(lm):
    from engine.model import vision_weights

    return vision_weights(lm)


POOLED_TERMS = ("attn_bias_image", "pool_mlp")  # a pooled store's per-image terms beyond CLIP's


def verify_store(path) -> dict:
    """Sum every image's stored terms, chunk by chunk; compare with `output` and the fp16 bound."""
    import numpy as np

    from engine.core.reconstruct import stored_sum
    from engine.store import open_store

    with open_store(path) as r:
        n = int(r.info["n_images"])
        const = {k: r.array(k) for k in ("basis", "attn_bias", "ln_bias")}
        step = int(r.info.get("image_chunk") or 1024)
        worst_ratio, max_abs, max_norm, worst_image = 0.0, 0.0, 0.0, -1
        for a in range(0, n, step):
            b = min(n, a + step)
            rows = {k: r.lazy(k)[a:b] for k in ("coord", "std", "mlp", "attn_rest", "embed")}
            out = r.lazy("output")[a:b]
            extra = tuple(r.lazy(k)[a:b] for k in POOLED_TERMS if r.has_array(k))
            s = stored_sum(
                rows["coord"], const["basis"], const["attn_bias"], rows["std"], rows["mlp"],
                rows["attn_rest"], rows["embed"], const["ln_bias"], out, extra,
            )  # fmt: skip
            ratio = s.error / np.maximum(s.bound, 1e-30)
            i = int(np.argmax(ratio))
            if ratio[i] > worst_ratio:
                worst_ratio, worst_image = float(ratio[i]), a + i
            max_abs = max(max_abs, float(np.abs(out - s.total).max()))
            max_norm = max(max_norm, float(np.linalg.norm(out, axis=1).max()))
        return {
            "store": str(path),
            "n_images": n,
            "layers": r.layers,
            "rest_layers": r.rest_layers,
            "max_abs_error": max_abs,
            "max_output_norm": max_norm,
            "relative_error": max_abs / max(max_norm, 1e-30),
            "worst_error_over_bound": worst_ratio,
            "worst_image": worst_image,
            "ok": bool(worst_ratio <= 1.0),
            "pooling": r.meta.pooling,
            "d_coord": r.d_coord,
            **_pool_mlp_share(r),
        }


def _pool_mlp_share(r) -> dict:
    """A pooled store: ||pool_mlp|| / ||output|| (mean, max) over its images, read back."""
    if not r.has_array("pool_mlp"):
        return {}
    import numpy as np

    mlp = np.asarray(r.array("pool_mlp"), np.float32)
    share = np.linalg.norm(mlp, axis=1) / np.maximum(np.linalg.norm(r.output(), axis=1), 1e-30)
    return {"pool_mlp_share_mean": float(share.mean()), "pool_mlp_share_max": float(share.max())}


def run_store(args) -> int:
    result = verify_store(args.store)
    from engine.pipeline.neurons import verify_store_neurons
    from engine.store import open_store

    with open_store(args.store) as r:
        nres = verify_store_neurons(r)
    if nres is not None:
        result.update(nres)
        result["ok"] = result["ok"] and nres["neuron_ok"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        status = "OK" if result["ok"] else "FAILED"
        print(
            f"{status}: the stored terms of {result['n_images']} images sum to the stored output "
            f"with max |error| / max ||output|| = {result['relative_error']:.2e}; worst image's "
            f"error is {result['worst_error_over_bound']:.2f}x its fp16 rounding bound "
            "(must be <= 1)"
        )
        if nres is not None:
            print(
                f"neurons {nres['neuron_layers']}: stored effects sum to each layer's propagated "
                f"write with max |error| / max ||write|| = {nres['neuron_relative_error']:.2e}; "
                f"worst image's error is {nres['neuron_worst_error_over_bound']:.2f}x its int8 "
                "bound (must be <= 1)"
            )
    return 0 if result["ok"] else 1
