"""Train the bundled demo CLIP from scratch on the demo world, on CPU, deterministically.

    nice -n 10 .venv/bin/python scripts/train_demo_model.py            # the shipped run
    nice -n 10 .venv/bin/python scripts/train_demo_model.py --biased   # the planted shortcut
    .venv/bin/python scripts/train_demo_model.py --steps 800 --out /tmp/pilot   # a pilot

The model is a genuine open_clip `CLIP` built by `open_clip.create_model` from the config
registered with `open_clip.add_model_config(engine/data/model_configs)`; the tokenizer is
open_clip's standard one. Data: images [step*batch, (step+1)*batch) of world seed TRAIN_SEED,
each with its generated caption. Loss: the symmetric CLIP contrastive loss, with every caption
in the batch that agrees with an image (parsed back from the caption grammar) counted as a
positive for it rather than a negative. Writes an open_clip `local-dir:` folder
(`open_clip_config.json` + `open_clip_model.safetensors`) and `metrics.json` (the model card's
numbers, see docs/demo-model.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import eval_demo_model as ev  # noqa: E402

from engine.sources import world  # noqa: E402  (eval_demo_model puts the repo root on sys.path)

CONFIG_DIR = ev.ROOT / "engine" / "data" / "model_configs"
MODEL_NAME = "demo-world-vit"
TRAIN_SEED = 12345
BIASED_DIR = ev.ROOT / "engine" / "data" / "demo_model_biased"
# the biased model is cheaper: 4 layers (so a store's default last four layers are all of them)
BIASED_OVERRIDES = {"vision_cfg.layers": 4}
BIASED_STEPS = 2400


def build_config(overrides: dict) -> dict:
    """The registered config, with dotted-key overrides for pilots (e.g. vision_cfg.width)."""
    cfg = json.loads((CONFIG_DIR / f"{MODEL_NAME}.json").read_text())
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


def create_model(cfg: dict, tmp: Path):
    """A fresh open_clip CLIP from `cfg`, registered the way open_clip registers configs."""
    import open_clip

    base = json.loads((CONFIG_DIR / f"{MODEL_NAME}.json").read_text())
    if cfg == base:
        open_clip.add_model_config(CONFIG_DIR)
        name = MODEL_NAME
    else:  # a pilot variant: register it under its own name from a scratch folder
        name = f"{MODEL_NAME}-pilot"
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(tmp)
    model = open_clip.create_model(name, pretrained=None)
    return model, open_clip.get_tokenizer(name)


def agreement(captions: list[str], codes: np.ndarray) -> torch.Tensor:
    """bool [image, text]: caption j names only values that image i has."""
    named = np.full((len(captions), codes.shape[1]), -1, dtype=np.int64)  # [text, factor]
    for j, text in enumerate(captions):
        for f, c in world.parse_caption(text).items():
            named[j, world.FACTOR_NAMES.index(f)] = c
    ok = (named[None] == codes[:, None]) | (named[None] < 0)  # [image, text, factor]
    return torch.from_numpy(ok.all(-1))


def multi_positive_loss(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss; logits [image, text], pos bool [image, text] (diagonal true).
    Targets spread evenly over each row's/column's positives."""
    t = pos.float()
    li = -(t / t.sum(1, keepdim=True) * F.log_softmax(logits, 1)).sum(1).mean()
    lt = -(t / t.sum(0, keepdim=True) * F.log_softmax(logits, 0)).sum(0).mean()
    return (li + lt) / 2


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def save(model, cfg: dict, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    size = cfg["vision_cfg"]["image_size"]
    local = {
        "model_cfg": cfg,
        "preprocess_cfg": {
            "size": size,
            "mean": list(ev.OPENAI_MEAN),
            "std": list(ev.OPENAI_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (out / "open_clip_config.json").write_text(json.dumps(local, indent=2) + "\n")


def train(
    model,
    tokenizer,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    wd: float,
    bias: world.Bias | None = None,
    log: str | None = None,
):
    """Train `model` in place for `steps` steps on world seed TRAIN_SEED (with `bias`, its
    biased variant); returns the losses. Deterministic given torch's seed: the data depend only
    on the step."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    token_cache: dict[str, torch.Tensor] = {}
    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc="train", mininterval=5)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        batch = world.generate(
            step * batch_size, (step + 1) * batch_size, seed=TRAIN_SEED, bias=bias
        )
        missing = [c for c in batch.captions if c not in token_cache]
        if missing:
            for c, tok in zip(missing, tokenizer(missing), strict=True):
                token_cache[c] = tok
        tokens = torch.stack([token_cache[c] for c in batch.captions])  # [text, context]
        pixels = ev.pixels_from_images(batch.images)  # [image, 3, H, W]
        img = model.encode_image(pixels, normalize=True)  # [image, d_embed]
        txt = model.encode_text(tokens, normalize=True)  # [text, d_embed]
        logits = model.logit_scale.exp() * img @ txt.T  # [image, text]
        loss = multi_positive_loss(logits, agreement(batch.captions, batch.codes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
            if log:
                with open(log, "a") as fh:
                    fh.write(
                        f"{time.strftime('%H:%M:%S')} step {step}/{steps} "
                        f"loss {np.mean(losses[-50:]):.3f}\n"
                    )
    model.eval()
    return losses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--biased",
        action="store_true",
        help=f"train on the biased world (world.BIAS), {BIASED_STEPS} steps, 4 layers, "
        "into engine/data/demo_model_biased",
    )
    p.add_argument(
        "--bias-strength", type=float, default=None, help="pilots: override world.BIAS.strength"
    )
    p.add_argument("--log", default=None, help="also append progress lines to this file")
    p.add_argument("--steps", type=int, default=None, help="default 4800 (biased: 2400)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="torch seed (initialisation)")
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared CPU")
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--out", default=None, help="default engine/data/demo_model[_biased]")
    p.add_argument("--set", nargs="*", default=[], help="config overrides key=json, pilots only")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    bias = None
    overrides = {}
    if args.biased:
        bias = world.BIAS
        if args.bias_strength is not None:
            bias = world.Bias(bias.core, bias.spurious, args.bias_strength)
        overrides.update(BIASED_OVERRIDES)
    args.steps = args.steps or (BIASED_STEPS if args.biased else 4800)
    args.out = args.out or str(BIASED_DIR if args.biased else ev.DEFAULT_MODEL_DIR)
    overrides.update({kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in args.set})
    cfg = build_config(overrides)
    if cfg["vision_cfg"]["image_size"] != world.IMAGE_SIZE:
        raise SystemExit(f"config image_size must equal world.IMAGE_SIZE ({world.IMAGE_SIZE})")
    out = Path(args.out)
    import tempfile

    model, tokenizer = create_model(cfg, Path(tempfile.mkdtemp(prefix="demo_config_")))
    n_params = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for p in model.visual.parameters())
    print(f"params {n_params:,} (vision {n_vision:,}); config {json.dumps(cfg)}", flush=True)

    t0 = time.time()
    losses = train(
        model, tokenizer, args.steps, args.batch, args.lr, args.warmup, args.wd, bias, args.log
    )
    train_s = time.time() - t0
    save(model, cfg, out)
    # evaluate exactly what was saved, loaded back through open_clip's local-dir path
    loaded, _, tok = ev.load_demo(out)
    res = ev.evaluate(loaded, tok, args.eval_images)
    metrics = {
        "model": MODEL_NAME,
        "config": cfg,
        "params": n_params,
        "vision_params": n_vision,
        "train": {
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "warmup": args.warmup,
            "weight_decay": args.wd,
            "torch_seed": args.seed,
            "world_seed": TRAIN_SEED,
            "bias": None if bias is None else dataclasses.asdict(bias),
            "threads": args.threads,
            "wall_s": round(train_s, 1),
            "final_loss": round(float(np.mean(losses[-100:])), 4),
            "loss_curve": [
                round(float(np.mean(losses[i : i + 100])), 4) for i in range(0, len(losses), 100)
            ],
            "torch": torch.__version__,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        },
        **res,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(
        f"trained {args.steps} steps in {train_s:.0f} s, final loss {metrics['train']['final_loss']}"
    )
    print(ev.format_report(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
