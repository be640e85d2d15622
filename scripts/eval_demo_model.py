"""Evaluate the demo CLIP on held-out demo-world images: zero-shot accuracy per factor and head
specialisation (η² of each head's direct contribution to the image embedding per factor).

    .venv/bin/python scripts/eval_demo_model.py [--model engine/data/demo_model] [--images 2000]

Also imported by `scripts/train_demo_model.py` and `tests/test_demo_model.py`. The head
contributions here use forward hooks on open_clip's own modules (script-only code, not the
engine); the engine's exact decomposition lives in `engine/decompose.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.core.layers import head_name  # noqa: E402
from engine.sources import world  # noqa: E402

DEFAULT_MODEL_DIR = ROOT / "engine" / "data" / "demo_model"
EVAL_SEED = 0  # held-out: the model trains on world seed TRAIN_SEED (train_demo_model.py)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def load_demo(model_dir: Path | str = DEFAULT_MODEL_DIR):
    """(model, preprocess, tokenizer) through open_clip's own `local-dir:` loader, eval mode."""
    import open_clip

    spec = f"local-dir:{Path(model_dir).resolve()}"
    model, _, preprocess = open_clip.create_model_and_transforms(spec)
    tokenizer = open_clip.get_tokenizer(spec)
    model.eval()
    return model, preprocess, tokenizer


def pixels_from_images(images: np.ndarray, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """uint8 [image, H, W, 3] -> normalised float [image, 3, H, W]; equals open_clip's
    preprocess on these images (their size is already the model's image size)."""
    x = torch.from_numpy(images).float().div_(255.0)
    x = x.permute(0, 3, 1, 2)  # [image, H, W, 3] -> [image, 3, H, W]
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def factor_text_embeddings(model, tokenizer) -> dict[str, torch.Tensor]:
    """Per factor: unit text embeddings [value, d_embed], each the mean over the value's
    prompt ensemble from `world.value_texts` (the captions' own wording)."""
    out = {}
    for f in world.FACTORS:
        groups = world.value_texts(f)
        flat = [t for g in groups for t in g]
        emb = model.encode_text(tokenizer(flat), normalize=True)  # [text, d_embed]
        emb = emb.view(len(groups), -1, emb.shape[-1]).mean(1)  # [value, prompt, d_embed] -> mean
        out[f] = F.normalize(emb, dim=-1)
    return out


@torch.no_grad()
def encode_images(model, pixels: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Unit image embeddings [image, d_embed]."""
    parts = [
        model.encode_image(pixels[i : i + batch_size], normalize=True)
        for i in range(0, len(pixels), batch_size)
    ]
    return torch.cat(parts)


def zero_shot(image_emb: torch.Tensor, text_emb: dict[str, torch.Tensor], codes: np.ndarray):
    """Zero-shot accuracy per factor: {factor: (accuracy, chance)}. codes int [image, factor]."""
    out = {}
    for k, f in enumerate(world.FACTORS):
        pred = (image_emb @ text_emb[f].T).argmax(1).numpy()  # [image]
        out[f] = (float((pred == codes[:, k]).mean()), 1.0 / len(world.FACTORS[f]))
    return out


def accuracy_bar(chance: float) -> float:
    """The quality bar: twice chance, or halfway from chance to perfect if chance > 1/3."""
    return (1.0 + chance) / 2 if chance > 1 / 3 + 1e-9 else 2.0 * chance


@torch.no_grad()
def head_contributions(model, pixels: torch.Tensor) -> torch.Tensor:
    """Each vision head's direct contribution to the (unnormalised) image embedding through the
    class token: [image, layer, head, d_embed]. ln_post is linearised with each image's own
    final-residual std (the usual decomposition); contributions are centred over d_model."""
    vis = model.visual
    blocks = list(vis.transformer.resblocks)
    ln1_out: list[torch.Tensor] = []
    final: list[torch.Tensor] = []
    hooks = [b.ln_1.register_forward_hook(lambda m, i, o: ln1_out.append(o)) for b in blocks]
    hooks.append(vis.ln_post.register_forward_hook(lambda m, i, o: final.append(i[0])))
    try:
        model.encode_image(pixels)
    finally:
        for h in hooks:
            h.remove()
    resid = final[0][:, 0]  # class token of the final residual: [image, d_model]
    std = (resid.var(-1, unbiased=False) + vis.ln_post.eps).sqrt()  # [image]
    gamma, proj = vis.ln_post.weight, vis.proj  # [d_model], [d_model, d_embed]
    outs = []
    for blk, x in zip(blocks, ln1_out, strict=True):
        attn = blk.attn
        n_heads = attn.num_heads
        d_model = x.shape[-1]
        d_head = d_model // n_heads
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # [image, token, 3*d_model]
        q, k, v = qkv.split(d_model, dim=-1)
        # [image, token, d_model] -> [image, head, token, d_head]
        q, k, v = (t.unflatten(-1, (n_heads, d_head)).transpose(1, 2) for t in (q, k, v))
        pattern = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / d_head**0.5, -1)
        z = (pattern @ v)[:, :, 0]  # class-token query: [image, head, d_head]
        w_o = attn.out_proj.weight.view(d_model, n_heads, d_head)  # [d_model, head, d_head]
        per_head = torch.einsum("ihd,mhd->ihm", z, w_o)  # [image, head, d_model]
        per_head = per_head - per_head.mean(-1, keepdim=True)  # LN centring is linear
        outs.append((per_head / std[:, None, None]) * gamma @ proj)  # [image, head, d_embed]
    return torch.stack(outs, 1)  # [image, layer, head, d_embed]


def eta_squared(contrib: torch.Tensor, codes: np.ndarray) -> np.ndarray:
    """η² of each head per factor: between-group over total sum of squares, summed over d_embed.
    contrib [image, layer, head, d_embed], codes int [image, factor] -> [layer, head, factor]."""
    x = contrib.double()
    x = x - x.mean(0, keepdim=True)
    total = (x**2).sum((0, 3))  # [layer, head]
    out = np.zeros((*total.shape, codes.shape[1]))
    for k in range(codes.shape[1]):
        g = torch.from_numpy(codes[:, k].astype(np.int64))
        n_groups = int(g.max()) + 1
        sums = torch.zeros(n_groups, *x.shape[1:], dtype=x.dtype).index_add_(0, g, x)
        counts = torch.bincount(g, minlength=n_groups).clamp(min=1).to(x.dtype)
        between = ((sums**2).sum(-1) / counts[:, None, None]).sum(0)  # [layer, head]
        out[..., k] = (between / total).numpy()
    return out


def specialisation(eta: np.ndarray, last_layers: int = 4) -> dict:
    """Dominant factor per head among the last `last_layers` layers (None if its η² < 0.5),
    and the bar: >= 4 distinct dominant factors, no single factor dominating every head."""
    names = list(world.FACTORS)
    n_layers = eta.shape[0]
    heads = []
    for layer in range(max(0, n_layers - last_layers), n_layers):
        for h in range(eta.shape[1]):
            k = int(eta[layer, h].argmax())
            share = float(eta[layer, h, k])
            heads.append(
                {
                    "head": head_name(layer, h),
                    "factor": names[k] if share >= 0.5 else None,
                    "top_factor": names[k],
                    "eta2": round(share, 3),
                }
            )
    dominant = {h["factor"] for h in heads if h["factor"]}
    counts = {f: sum(h["factor"] == f for h in heads) for f in names}
    passed = len(dominant) >= 4 and max(counts.values()) < len(heads)
    return {"heads": heads, "factors_dominant": sorted(dominant), "counts": counts, "pass": passed}


def evaluate(model, tokenizer, n_images: int = 2000, seed: int = EVAL_SEED) -> dict:
    """Zero-shot accuracy and head specialisation on held-out images [0, n_images) of `seed`."""
    batch = world.generate(0, n_images, seed=seed)
    pixels = pixels_from_images(batch.images)
    codes = batch.codes.astype(np.int64)
    with torch.no_grad():
        acc = zero_shot(
            encode_images(model, pixels), factor_text_embeddings(model, tokenizer), codes
        )
        contrib = torch.cat(
            [head_contributions(model, pixels[i : i + 500]) for i in range(0, n_images, 500)]
        )
    eta = eta_squared(contrib, codes)
    spec = specialisation(eta)
    zs = {
        f: {"accuracy": round(a, 4), "chance": round(c, 4), "bar": round(accuracy_bar(c), 4)}
        for f, (a, c) in acc.items()
    }
    return {
        "eval_images": n_images,
        "eval_seed": seed,
        "zero_shot": zs,
        "zero_shot_pass": all(v["accuracy"] >= v["bar"] for v in zs.values()),
        "eta2": np.round(eta, 4).tolist(),
        "specialisation": spec,
    }


def format_report(res: dict) -> str:
    lines = ["factor       accuracy  chance  bar    pass"]
    for f, v in res["zero_shot"].items():
        ok = "yes" if v["accuracy"] >= v["bar"] else "NO"
        lines.append(f"{f:12s} {v['accuracy']:.3f}     {v['chance']:.3f}   {v['bar']:.3f}  {ok}")
    spec = res["specialisation"]
    lines.append("head    dominant     eta2  (top factor)")
    for h in spec["heads"]:
        lines.append(f"{h['head']:7s} {str(h['factor']):12s} {h['eta2']:.3f} ({h['top_factor']})")
    lines.append(f"dominant factors: {spec['factors_dominant']}  heads bar pass: {spec['pass']}")
    return "\n".join(lines)


def markdown_tables(res: dict) -> str:
    """The model card's zero-shot and head-specialisation tables, in Markdown."""
    out = [
        "| factor | values | zero-shot accuracy | chance | bar | pass |",
        "|---|---|---|---|---|---|",
    ]
    for f, v in res["zero_shot"].items():
        ok = "yes" if v["accuracy"] >= v["bar"] else "**no**"
        n = len(world.FACTORS[f])
        out.append(
            f"| {f} | {n} | {v['accuracy']:.3f} | {v['chance']:.3f} | {v['bar']:.3f} | {ok} |"
        )
    names = list(world.FACTORS)
    eta = np.array(res["eta2"])
    out += ["", "| head | " + " | ".join(names) + " | dominant |", "|---" * (len(names) + 2) + "|"]
    for h in res["specialisation"]["heads"]:
        layer, head = (int(x) for x in h["head"][1:].split("H"))
        cells = [f"{eta[layer, head, k]:.2f}" for k in range(len(names))]
        k = int(eta[layer, head].argmax())
        cells[k] = f"**{cells[k]}**"
        out.append(f"| {h['head']} | " + " | ".join(cells) + f" | {h['factor'] or '—'} |")
    spec = res["specialisation"]
    counts = ", ".join(f"{f} {n}" for f, n in spec["counts"].items() if n)
    out += [
        "",
        f"Dominant factors: {len(spec['factors_dominant'])} ({counts}); "
        f"bar met: {'yes' if spec['pass'] else 'no'}.",
    ]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="open_clip local-dir folder")
    p.add_argument("--images", type=int, default=2000, help="held-out images to evaluate on")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--markdown", action="store_true", help="print the model card's tables")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model, _, tokenizer = load_demo(args.model)
    res = evaluate(model, tokenizer, args.images)
    print(markdown_tables(res) if args.markdown else format_report(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
