"""`visualise`: a synthesized input image per unit (head or MLP neuron), stored with the store.

For each head of an ablation-style spec (`engine.core.ablation_spec`), the image maximising the
head's direct contribution along its first principal direction (from `interpret`'s
`unit_summary`); for each neuron of a neuron spec (`engine.core.neuron_spec`: `L6N12`,
`neurons:L6:top:8`, …) the image maximising its second-order effect along its direction
(`engine.core.visualise.neuron_score`, from `interpret --neurons`' unit rows). Either is optimised with the MACO-style parametrisation of `engine.core.visualise`, then
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
from engine.core.layers import head_name, unit_name
from engine.core.neuron_spec import is_neuron_spec, parse_neuron_spec
from engine.errors import UserError

METHOD = "maco-1/f"
N_BASELINE = 16  # images per baseline


@dataclass(frozen=True)
class VisualiseRow:
    layer: int
    head: int  # the unit's index in its layer: a head, or a neuron when kind is "neuron"
    objective: float
    noise_mean: float
    noise_sd: float
    init_mean: float
    init_sd: float
    store_max: float
    image: np.ndarray  # uint8 [S, S, 3]
    kind: str = "head"

    @property
    def name(self) -> str:
        return unit_name(self.kind, self.layer, self.head)

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
    """Visualise every unit `spec` names (heads, or neurons in the neuron spec language) and
    store the images; returns one row per unit."""
    if steps < 1 or views < 1 or not lr > 0:
        raise UserError("--steps and --views must be at least 1 and --lr positive")
    targets_of = _neuron_targets if is_neuron_spec(spec) else _head_targets
    version, targets, size = targets_of(store_path, spec)
    return _optimise_and_store(store_path, version, spec, targets, size, steps=steps, lr=lr,
                               views=views, seed=seed, progress=progress)  # fmt: skip


def _head_targets(store_path, spec: str):
    """(store version, targets, image size) of the heads `spec` names: each head's contribution
    along its direction (`vis.head_score`)."""
    from engine.model import capture_grad
    from engine.session import StoreSession
    from engine.store import unit_tables

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
    targets = []
    for l, h in chosen:
        u = torch.as_tensor(np.asarray(summary.loc[(l, h), "direction"], np.float32))

        def score(images, l=l, h=h, u=u):
            cap = capture_grad(lm, (images - mean) / std, [l])
            return vis.head_score(weights, cap, l, h, u)

        targets.append(("head", l, h, score, store_max[(l, h)]))
    return version, targets, int(info["image_size"])


def _optimise_and_store(store_path, version, spec, targets, size, *, steps, lr, views, seed,
                        progress) -> list[VisualiseRow]:  # fmt: skip
    """Optimise each target (kind, layer, index, score(images) -> [image], store_max), score the
    baselines, and write the rows in one `mutate_store` against `version`."""
    from engine.store import mutate_store, unit_tables

    gen = torch.Generator().manual_seed(seed + 7)
    noise = torch.rand(N_BASELINE, 3, size, size, generator=gen)  # [image, 3, S, S] in [0, 1]
    with torch.no_grad():
        inits = torch.cat([vis.FourierImage(size, seed=1000 + i)() for i in range(N_BASELINE)])
    run_id, started, rows = uuid.uuid4().hex, time.perf_counter(), []
    for kind, l, i, score, best in tqdm(targets, desc="visualise", unit="unit",
                                        disable=not progress):  # fmt: skip
        out = vis.optimise(score, size, steps=steps, lr=lr, views=views, seed=seed)
        with torch.no_grad():
            sn, si = score(noise).numpy(), score(inits).numpy()
        img = (out.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # [S, S, 3]
        rows.append(
            VisualiseRow(l, i, out.objective, float(sn.mean()), float(sn.std()),
                         float(si.mean()), float(si.std()), best, img, kind)
        )  # fmt: skip
    params = {"steps": steps, "lr": lr, "views": views, "seed": seed, "spec": spec,
              "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip
    df = pd.DataFrame(
        [(x.layer, x.head if x.kind == "head" else None, x.head if x.kind == "neuron" else None,
          x.kind, x.name, _png(x.image), x.objective, x.noise_mean, x.noise_sd, x.init_mean,
          x.init_sd, x.store_max, METHOD, json.dumps(params), run_id) for x in rows],
        columns=["layer", "head", "neuron", "kind", "unit", "image", "objective", "noise_mean",
                 "noise_sd", "init_mean", "init_sd", "store_max", "method", "parameters",
                 "run_id"],
    )  # fmt: skip
    with mutate_store(store_path, expect_version=version) as w:
        unit_tables.replace_unit_visualisations(w, df)
    return rows


def _neuron_targets(store_path, spec: str):
    """(store version, targets, image size) of `visualise --units L6N12 | neurons:L6:top:8 | …`:
    each neuron's second-order effect along its direction (`vis.neuron_score`), differentiable
    on the image being optimised."""
    from engine.core import neuron_maps as nm
    from engine.model.capture import capture_neurons_grad
    from engine.pipeline.neurons import StoredNeurons
    from engine.session import StoreSession
    from engine.store import unit_tables

    with StoreSession.open(store_path) as session:
        r = session.reader
        version, info = r.version_path, dict(r.info)
        sn = StoredNeurons(r)  # refuses a store built without neurons (names the build)
        summary = unit_tables.unit_summary(r, "neuron")
        if summary.empty:
            raise UserError(
                f"no neuron unit rows in {store_path}: run `python -m engine interpret --store "
                f"{store_path} --neurons all` first"
            )
        table = session.neuron_table()  # significance as the ablation spec ranks it
        significance = {int(l): g.sort_values("neuron").significance.to_numpy()
                        for l, g in table.groupby("layer")}  # fmt: skip
        dirs = {
            (int(l), int(n)): np.asarray(d, np.float32)
            for l, n, d in zip(summary.layer, summary.neuron, summary.direction, strict=True)
        }

        def text_scores(layer: int, text: str) -> np.ndarray:
            t = session.text_embeddings([text])[0]
            out = np.full(len(significance[layer]), -np.inf)
            for (l, n), d in dirs.items():
                if l == layer:
                    out[n] = float(d @ t)
            return out

        chosen = parse_neuron_spec(spec, significance, text_scores)
        units_ = [(l, int(n)) for l, ns in chosen.items() for n in ns]
        missing = [unit_name("neuron", l, n) for l, n in units_ if (l, n) not in dirs]
        if missing:
            raise UserError(f"{', '.join(missing[:4])} not interpreted: run interpret --neurons")
        paths = {l: sn.path_maps(l) for l in chosen}
        store_max = {}
        for l, n in units_:
            ex = unit_tables.unit_examples_of(r, unit_name("neuron", l, n))
            store_max[(l, n)] = float(ex[ex.side == "top"].projection.max()) if len(ex) else np.nan
        lm = session.model()  # verified against the store's weights
        weights = session.vision_weights()
    mean, std = _normalisation(lm)
    targets = []
    for l, n in units_:
        u, basis, _ = paths[l]
        gains = nm.path_gains(
            torch.as_tensor(np.ascontiguousarray(u[:, n : n + 1]), dtype=torch.float32),
            torch.as_tensor(np.ascontiguousarray(basis), dtype=torch.float32),
            torch.as_tensor(dirs[(l, n)]),
        )[:, 0]  # [K]
        later = list(range(l + 1, weights.n_layers))

        def score(images, l=l, n=n, gains=gains, later=later):
            cap, ncap = capture_neurons_grad(lm, (images - mean) / std, [l])
            s = (cap.resid.float().var(-1, unbiased=False) + weights.ln_post_eps).sqrt()
            return vis.neuron_score(weights, cap.attn_in, ncap.ln_std, ncap.acts[l][..., n].float(),
                                    s, later, gains)  # fmt: skip

        targets.append(("neuron", l, n, score, store_max[(l, n)]))
    return version, targets, int(info["image_size"])


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()
