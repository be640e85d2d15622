"""`visualise`: a synthesized input image per head, stored with the store.

For each head of an ablation-style spec (`engine.core.ablation_spec`), the image maximising the
head's direct contribution along its first principal direction (from `interpret`'s
`unit_summary`) is optimised with the MACO-style parametrisation of `engine.core.visualise`, then
scored against two baselines on the same objective: uniform-noise images and unoptimised Fourier
images (random phases), and the highest projection among the stored images. Written into the
declared `unit_visualisations` table in one `mutate_store` against the version read.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from engine.core import visualise as vis
from engine.core.ablation_spec import parse_ablation_spec
from engine.core.layers import head_name
from engine.errors import UserError

METHOD = "maco-1/f"
N_BASELINE = 16  # images per baseline


@dataclass(frozen=True)
class VisualiseRow:
    layer: int
    head: int
    objective: float
    noise_mean: float
    noise_sd: float
    init_mean: float
    init_sd: float
    store_max: float
    image: np.ndarray  # uint8 [S, S, 3]

    @property
    def name(self) -> str:
        return head_name(self.layer, self.head)

    @property
    def sigmas_above_init(self) -> float:
        return (self.objective - self.init_mean) / max(self.init_sd, 1e-12)


def _normalisation(lm) -> tuple[torch.Tensor, torch.Tensor]:
    """The preprocessing's per-channel mean and std `[1, 3, 1, 1]` (identity when it has none)."""
    for t in getattr(lm.preprocess, "transforms", []):
        if hasattr(t, "mean") and hasattr(t, "std"):
            mean = torch.as_tensor(t.mean, dtype=torch.float32).reshape(1, 3, 1, 1)
            std = torch.as_tensor(t.std, dtype=torch.float32).reshape(1, 3, 1, 1)
            return mean, std
    return torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)


def run_visualise(
    store_path,
    spec: str,
    *,
    steps: int = vis.DEFAULT_STEPS,
    lr: float = vis.DEFAULT_LR,
    views: int = vis.DEFAULT_VIEWS,
    seed: int = 0,
    progress: bool = True,
) -> list[VisualiseRow]:
    """Visualise every head `spec` names and store the images; returns one row per head."""
    from engine.model import capture_grad
    from engine.session import StoreSession
    from engine.store import mutate_store, unit_tables

    if steps < 1 or views < 1 or not lr > 0:
        raise UserError("--steps and --views must be at least 1 and --lr positive")
    with StoreSession.open(store_path) as session:
        r = session.reader
        version = r.version_path
        info = dict(r.info)
        heads = [(l, h) for l in r.layers for h in range(r.n_heads)]
        names = parse_ablation_spec(
            spec, heads, r.head_labels(), int(info["n_layers"]), stored_layers=r.layers
        )
        by_name = {head_name(l, h): (l, h) for l, h in heads}
        others = [n for n in names if n not in by_name]
        if others:
            raise UserError(
                f"visualise takes heads; {', '.join(others[:4])} "
                f"{'is' if len(others) == 1 else 'are'} not a stored head"
            )
        if not names:
            raise UserError(f"the spec {spec!r} names no head")
        summary = unit_tables.unit_summary(r).set_index(["layer", "head"])
        if summary.empty:
            raise UserError(
                f"no unit directions in {store_path}: run `python -m engine interpret --store "
                f"{store_path}` first"
            )
        chosen = [by_name[n] for n in names]
        missing = [head_name(*k) for k in chosen if k not in summary.index]
        if missing:
            raise UserError(f"{', '.join(missing[:4])} not interpreted: run interpret on its layer")
        store_max = {}
        for key in chosen:
            ex = unit_tables.unit_examples(r, *key)
            store_max[key] = float(ex[ex.side == "top"].projection.max()) if len(ex) else np.nan
        if session.pooled:
            raise UserError(
                f"{store_path}: visualise does not handle attention-pooled (SigLIP) stores yet "
                "(its objective is the class-token head term); the other commands do"
            )
        lm = session.model()  # verified against the store's weights
        weights = session.vision_weights()
    mean, std = _normalisation(lm)
    size = int(info["image_size"])
    gen = torch.Generator().manual_seed(seed + 7)
    noise = torch.rand(N_BASELINE, 3, size, size, generator=gen)  # [image, 3, S, S] in [0, 1]
    with torch.no_grad():
        inits = torch.cat([vis.FourierImage(size, seed=1000 + i)() for i in range(N_BASELINE)])
    run_id, started, rows = uuid.uuid4().hex, time.perf_counter(), []
    for l, h in tqdm(chosen, desc="visualise", unit="head", disable=not progress):
        u = torch.as_tensor(np.asarray(summary.loc[(l, h), "direction"], np.float32))

        def score(images, l=l, h=h, u=u):
            cap = capture_grad(lm, (images - mean) / std, [l])
            return vis.head_score(weights, cap, l, h, u)

        out = vis.optimise(score, size, steps=steps, lr=lr, views=views, seed=seed)
        with torch.no_grad():
            sn, si = score(noise).numpy(), score(inits).numpy()
        img = (out.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # [S, S, 3]
        rows.append(
            VisualiseRow(l, h, out.objective, float(sn.mean()), float(sn.std()),
                         float(si.mean()), float(si.std()), store_max[(l, h)], img)
        )  # fmt: skip
    params = {"steps": steps, "lr": lr, "views": views, "seed": seed, "spec": spec,
              "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
    df = pd.DataFrame(
        [(x.layer, x.head, x.name, _png(x.image), x.objective, x.noise_mean, x.noise_sd,
          x.init_mean, x.init_sd, x.store_max, METHOD, json.dumps(params), run_id) for x in rows],
        columns=["layer", "head", "unit", "image", "objective", "noise_mean", "noise_sd",
                 "init_mean", "init_sd", "store_max", "method", "parameters", "run_id"],
    )  # fmt: skip
    with mutate_store(store_path, expect_version=version) as w:
        unit_tables.replace_unit_visualisations(w, df)
    return rows


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()
