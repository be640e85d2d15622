"""Agreement of our second-order neuron lens with the reference's `prs_second_order_neurons_hook`
(Gandelsman, Efros, Steinhardt, ICLR 2025; repository yossigandelsman/second_order_lens).

The reference is an external checkout given by `--reference PATH`; it is imported at run time
only (nothing of it is copied here). It needs `einops` (not a project dependency): put it on
PYTHONPATH from a separate folder, e.g. `pip install --target /work/ref/pydeps einops`.

Same weights: open_clip ViT-B-32 (GELU) at a seeded random init, with every LayerNorm γ/β and
every bias on the lens's path (`in_proj_bias`, `out_proj.bias`, `c_proj.bias`) set to seeded
random values (a random init leaves them at 1 / 0, which would hide the bias conventions), saved
to one checkpoint that both load: ours as `ViT-B-32:/path/ckpt.pt`, theirs through its own
`utils.factory.create_model_and_transforms(pretrained=path)`. Same images: deterministic
synthetic pictures, preprocessed once (ours); the identical pixel tensors go to both.

Reference side, per image and neuron layer, as its `compute_second_order_neuron_prs.py` does:
`encode_image(attn_method="head", normalize=False)`, `finalize()`, then the sum over every later
(layer, head) of `apply_attention_head_and_project_layer_neurons` -> [image, neuron, d_embed].
Ours: `capture_neurons` + `second_order.coefficients` + `second_order.effects`, times the
reference's `100 / ||z||` scale. Three comparisons (see docs/decomposition.md, "The reference's
conventions"):

- raw: their array as it is;
- offset removed: minus their per-image offset (every neuron of a layer gets the same share of the
  LayerNorm means and of every bias); the offset is read from their own code by zeroing one probe
  neuron's activations after the forward (its output is then the offset alone; the probe neuron
  is left out of every metric);
- centred: their code with two run-time wrappers (never edits): the neuron's write centred before
  `ln_1` (`apply_mlp_post`) and the class-token vector centred before `ln_post`
  (`project_attentions_to_output_per_neuron`), offset removed the same way; this is the exact
  linearisation we implement, so it should agree to fp32 rounding.

Runtime per image (wall clock, default threads, one process, same run): ours for all the layers
(one capture forward + coefficients + materialised effects) vs theirs (forward + later-head loop).

    PYTHONPATH=/work/ref/pydeps .venv/bin/python benchmarks/bench_reference_neurons.py \\
        --reference /work/ref/second_order_lens [--layers 8,9,10] [--n-images 3] [--centred 1]
Writes benchmarks/results/reference_neurons.json (the recorded run: the arguments shown, ~35 min
on 2 shared cores; the reference takes ~7 min per image for layers 8-10). Without --reference (and
$SECOND_ORDER_LENS) it prints one line and skips; a --reference that is not a checkout is refused
with one line (exit 2).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core import second_order as so  # noqa: E402
from engine.model import load_model, vision_weights  # noqa: E402
from engine.model.capture import capture_neurons, mlp_proj_weight  # noqa: E402
from engine.pipeline.provenance import env_info  # noqa: E402

ARCH = "ViT-B-32"
PROBE = 0  # the neuron whose activations are zeroed on the reference side to read its offset
NEEDED = ("prs_second_order_neurons_hook.py", "utils/factory.py")


def die(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def import_reference(path: str):
    ref = Path(path).expanduser()
    if not ref.is_dir():
        die(f"--reference {path}: folder not found (a second_order_lens checkout is needed)")
    missing = [f for f in NEEDED if not (ref / f).is_file()]
    if missing:
        die(
            f"--reference {path}: not a second_order_lens checkout (missing {', '.join(missing)}); "
            "clone github.com/yossigandelsman/second_order_lens there"
        )
    sys.path.insert(0, str(ref))
    try:
        hook = importlib.import_module("prs_second_order_neurons_hook")
        factory = importlib.import_module("utils.factory")
    except ImportError as e:
        die(f"the reference checkout cannot be imported ({e}); it needs einops on PYTHONPATH")
    return hook, factory


# ---------------------------------------------------------------------------- weights, images


def make_checkpoint(path: Path, seed: int) -> None:
    """ViT-B-32 at a seeded random init with random LayerNorm γ/β and path biases; saved."""
    lm = load_model(ARCH, random_weights=True, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    sd = lm.model.state_dict()
    for k, t in sd.items():
        if not k.startswith("visual."):
            continue
        if k.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
            t.copy_(1.0 + 0.2 * torch.randn(t.shape, generator=g))
        elif k.endswith(("ln_1.bias", "ln_2.bias", "ln_pre.bias", "ln_post.bias")) or k.endswith(
            ("in_proj_bias", "out_proj.bias", "c_proj.bias")
        ):
            t.copy_(0.1 * torch.randn(t.shape, generator=g))
    torch.save(sd, path)


def synthetic_images(n: int, seed: int):
    """n deterministic 256x256 RGB pictures: smooth colour fields with a few discs and bars."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    out = []
    for _ in range(n):
        img = np.zeros((256, 256, 3))
        for c in range(3):
            a, b, p = rng.uniform(-1, 1, 3)
            img[..., c] = 0.5 + 0.4 * np.sin(3 * (a * xx + b * yy) + 6 * p)
        for _ in range(3):
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 1, 3)
        y0 = int(rng.integers(0, 200))
        img[y0 : y0 + 20] = rng.uniform(0, 1, 3)
        out.append(Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)))
    return out


# ------------------------------------------------------------------------------------- ours


@torch.no_grad()
def ours(lm, weights, pixels, layers, bases):
    """{layer: [image, neuron, d_embed]} effects × 100 / ||z||, and seconds per image."""
    t0 = time.perf_counter()
    cap, ncap = capture_neurons(lm, pixels, [], layers)
    std = (cap.resid.float().var(-1, unbiased=False) + weights.ln_post_eps).sqrt()
    scale = 100.0 / cap.output.float().norm(dim=-1)
    out = {}
    for l in layers:
        nb = bases[l]
        c = so.coefficients(weights, cap.attn_in, ncap.ln_std, ncap.acts[l].float(), nb.later)
        out[l] = (so.effects(c, std, nb) * scale[:, None, None]).numpy()
    return out, (time.perf_counter() - t0) / len(pixels), cap.output.float()


# ------------------------------------------------------------------------------------ theirs


def centring_wrappers(prs) -> None:
    """Run-time wrappers on one SecondOrderPrsNeurons instance (their code unchanged): centre
    the neuron's write before ln_1 and the class-token vector before ln_post."""
    mlp_post, to_output = prs.apply_mlp_post, prs.project_attentions_to_output_per_neuron

    def centred_mlp_post(mlps, layer):
        r = mlp_post(mlps, layer)
        return r - r.mean(dim=-1, keepdim=True)

    def centred_to_output(bnmc, layer_in, layer_out):
        return to_output(bnmc - bnmc.mean(dim=-1, keepdim=True), layer_in, layer_out)

    prs.apply_mlp_post = centred_mlp_post
    prs.project_attentions_to_output_per_neuron = centred_to_output


@torch.no_grad()
def theirs(prss, model, pixels):
    """{layer: [image, neuron, d_embed]} float32 from their hooks (`prss`: {layer: the object
    `hook_prs_logger` registered}), one image at a time (their batch size); per image: forward
    seconds and per-layer loop seconds."""
    layers = list(prss)
    n_layers = len(model.visual.transformer.resblocks)
    n_heads = model.visual.transformer.resblocks[0].attn.num_heads
    out = {l: [] for l in layers}
    fwd_s, loop_s, embeds = [], {l: [] for l in layers}, []
    for i in range(len(pixels)):
        for prs in prss.values():
            prs.reinit()
        t0 = time.perf_counter()
        rep = model.encode_image(pixels[i : i + 1], attn_method="head", normalize=False)
        fwd_s.append(time.perf_counter() - t0)
        embeds.append(rep)
        for l, prs in prss.items():
            t0 = time.perf_counter()
            prs.finalize()
            prs.post_gelu_outputs[..., PROBE] = 0.0  # probe: its output is the offset alone
            res = [
                prs.apply_attention_head_and_project_layer_neurons(lp, h, rep)
                for lp in range(l + 1, n_layers)
                for h in range(n_heads)
            ]
            out[l].append(np.stack(res, axis=0).sum(axis=0))
            loop_s[l].append(time.perf_counter() - t0)
            print(f"  reference image {i} layer {l}: {loop_s[l][-1]:.1f} s", flush=True)
    return {l: np.concatenate(v) for l, v in out.items()}, fwd_s, loop_s, torch.cat(embeds)


# ----------------------------------------------------------------------------------- metrics


def compare(ref: np.ndarray, our: np.ndarray, top: int = 30) -> dict:
    """ref, our: [image, neuron, d_embed] (probe neuron already removed)."""
    ref, our = ref.astype(np.float64), our.astype(np.float64)
    diff = ref - our
    rn, on, dn = (np.linalg.norm(x, axis=-1) for x in (ref, our, diff))
    cos = (ref * our).sum(-1) / np.maximum(rn * on, 1e-30)
    rel = dn / np.maximum(rn, 1e-30)
    overlap = []
    for i in range(ref.shape[0]):
        a, b = set(np.argsort(-rn[i])[:top]), set(np.argsort(-on[i])[:top])
        overlap.append(len(a & b) / top)
    return {
        "relative_error_fro": float(np.linalg.norm(diff) / np.linalg.norm(ref)),
        "max_abs_error": float(np.abs(diff).max()),
        "max_abs_over_max_norm": float(np.abs(diff).max() / rn.max()),
        "per_neuron_relative_error": {
            "median": float(np.median(rel)),
            "p99": float(np.quantile(rel, 0.99)),
            "max": float(rel.max()),
        },
        "cosine": {"median": float(np.median(cos)), "p1": float(np.quantile(cos, 0.01)),
                   "min": float(cos.min())},
        "norm_ratio_median": float(np.median(rn / np.maximum(on, 1e-30))),
        f"top{top}_by_norm_overlap_mean": float(np.mean(overlap)),
    }  # fmt: skip


def without_probe(x: np.ndarray) -> np.ndarray:
    return np.delete(x, PROBE, axis=1)


# -------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--reference",
        default=os.environ.get("SECOND_ORDER_LENS"),
        help="a second_order_lens checkout (default: $SECOND_ORDER_LENS)",
    )
    ap.add_argument("--layers", default="8,9,10", help="neuron layers, comma-separated")
    ap.add_argument("--n-images", type=int, default=3)
    ap.add_argument("--centred", type=int, default=1, help="images for the centred comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/reference_neurons.json"))
    args = ap.parse_args(argv)
    if not args.reference:  # `make bench` on a machine without the external checkout
        print(
            "skipped: no --reference PATH (or $SECOND_ORDER_LENS) to a second_order_lens checkout"
        )
        return 0
    hook, factory = import_reference(args.reference)
    layers = sorted(int(x) for x in args.layers.split(","))
    torch.manual_seed(args.seed)
    load = [list(os.getloadavg())]
    with tempfile.TemporaryDirectory(prefix="bench-ref-neurons-") as tmp:
        ckpt = Path(tmp) / f"{ARCH}-random-seed{args.seed}.pt"
        make_checkpoint(ckpt, args.seed)
        lm = load_model(f"{ARCH}:{ckpt}")
        weights = vision_weights(lm)
        pixels = torch.stack([lm.preprocess(im) for im in synthetic_images(args.n_images, 7)])
        model = factory.create_model_and_transforms(ARCH, pretrained=str(ckpt))[0].eval()
        t0 = time.perf_counter()
        bases = {
            l: so.neuron_bases(weights, mlp_proj_weight(lm, l).float(), l) for l in layers
        }  # fmt: skip
        bases_s = time.perf_counter() - t0
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        eff, ours_s1, z_ours = ours(lm, weights, pixels, layers, bases)
        rss_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        prss = {l: hook.hook_prs_logger(model, l, "cpu") for l in layers}
        ref, fwd_s, loop_s, z_ref = theirs(prss, model, pixels)
        rss_ref = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _, ours_s2, _ = ours(lm, weights, pixels, layers, bases)
        load.append(list(os.getloadavg()))
        # the reference's storage: its script np.save's [images, neuron, d_embed] per layer
        npy = Path(tmp) / "ref.npy"
        np.save(npy, ref[layers[0]])
        ref_bytes = npy.stat().st_size / args.n_images
        cen = {}
        if args.centred > 0:
            for prs in prss.values():
                centring_wrappers(prs)
            cen, _, _, _ = theirs(prss, model, pixels[: args.centred])
        load.append(list(os.getloadavg()))

    per_layer = {}
    for l in layers:
        r, o = ref[l], eff[l]
        offset = r[:, PROBE : PROBE + 1]  # [image, 1, d_embed]
        row = {
            "later_paths": (lm.dims.n_layers - 1 - l) * lm.dims.n_heads,
            "raw": compare(without_probe(r), without_probe(o)),
            "offset_removed": compare(without_probe(r - offset), without_probe(o)),
            "offset_norm_over_median_effect_norm": float(
                np.median(np.linalg.norm(offset[:, 0], axis=-1))
                / np.median(np.linalg.norm(without_probe(o), axis=-1))
            ),
            "reference_loop_s_per_image": statistics.median(loop_s[l]),
        }
        if cen:
            c = cen[l]
            row["centred"] = compare(
                without_probe(c - c[:, PROBE : PROBE + 1]), without_probe(o[: args.centred])
            )
        per_layer[str(l)] = row
    ours_s = statistics.median([ours_s1, ours_s2])
    fwd = statistics.median(fwd_s)
    ref_s = fwd + sum(per_layer[str(l)]["reference_loop_s_per_image"] for l in layers)
    result = {
        "env": env_info(),
        "threads": torch.get_num_threads(),
        "load": load,
        "model": f"{ARCH} (GELU) random init seed {args.seed}, random LayerNorm γ/β and biases",
        "reference": {
            "path": str(args.reference),
            "files": ["prs_second_order_neurons_hook.py", "utils/factory.py (its open_clip)"],
        },
        "n_images": args.n_images,
        "n_images_centred": min(args.centred, args.n_images),
        "probe_neuron_excluded": PROBE,
        "embedding_max_abs_diff": float((z_ours - z_ref).abs().max()),
        "embedding_max_norm": float(z_ours.norm(dim=-1).max()),
        "per_layer": per_layer,
        "storage": {
            "reference_bytes_per_image_per_layer": ref_bytes,
            "reference_dtype": str(ref[layers[0]].dtype),
        },
        "runtime": {
            "ours_s_per_image_all_layers": ours_s,
            "ours_runs_s_per_image": [ours_s1, ours_s2],
            "ours_bases_s_once": bases_s,
            "reference_forward_s_per_image": fwd,
            "reference_s_per_image_all_layers": ref_s,
            "reference_over_ours": ref_s / ours_s,
        },
        "max_rss_kb": {"before": rss0, "after_ours": rss_ours, "after_reference": rss_ref},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
