"""Segmentation scored against ground-truth masks: plan -> compute maps -> score -> write.

For each evaluation image the model is run once (forward hooks), and every stored head's
per-patch map along the image's text direction is computed exactly (`core.decompose.patch_maps`:
each map sums to that head's direct contribution · direction). The maps are scored against the
object mask (`core.segmetrics`: the TextSpan paper's pixel accuracy, mIoU and mAP, plus the
pointing game) for each head alone, for every head set asked for, and for the aggregate of all
stored heads. Results go to the `segmentation_scores` table with a `runs` record.

Mask sources:
- `world`: held-out demo-world images (a world seed the store was not built from) with the
  renderer's own object masks; the text names the image's colour (the world's prompt ensemble).
- a folder: `--images DIR` with a same-named PNG per image under `--masks MASKS` (non-zero =
  object); the text is `--text`, or "a photo of a {class}" from the image's parent folder.
Masks get the model's own geometry (shortest side resized, centre crop), nearest-neighbour.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from engine.core import segmetrics
from engine.core.decompose import patch_maps
from engine.core.layers import head_name
from engine.core.zeroshot import class_embeddings
from engine.errors import UserError
from engine.model import capture
from engine.pipeline import provenance
from engine.session import StoreSession
from engine.sources import imageio, world
from engine.store import mutate_store

WORLD_SEED_OFFSET = 1_000_003  # held-out world: a seed no demo store is built from
METRICS = ("pixel_acc", "miou", "map", "pointing")


@dataclass
class SegEvalParams:
    store: str
    masks: str  # "world" or a folder of mask PNGs
    images: str | None = None  # the image folder (folder masks only)
    text: str | None = None  # folder masks: the text whose map is scored
    n_images: int = 200  # world masks: how many held-out images
    batch_size: int = 16
    head_sets: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    write: bool = True


@dataclass
class EvalSet:
    """What is scored: pixels [image, 3, S, S], masks bool [image, S, S], directions
    [image, d_embed] (unit text embedding per image) and a description of the source."""

    pixels: torch.Tensor
    masks: np.ndarray
    directions: np.ndarray
    source: str
    text: str


@dataclass
class SegEvalResult:
    run_id: str
    rows: pd.DataFrame  # scope, name, layer, head, n_images, pixel_acc, miou, map, pointing
    source: str
    text: str
    timings: dict

    def aggregate(self) -> dict:
        return self.rows[self.rows["scope"] == "aggregate"].iloc[0].to_dict()


def _world_set(s, n: int) -> EvalSet:
    lm = s.model()
    src = s.meta.images_source
    seed = int(src.split(":")[2]) if src.startswith("synthetic:") and src.count(":") == 2 else 0
    batch = world.generate(0, n, seed=seed + WORLD_SEED_OFFSET, masks=True)
    size = lm.dims.image_size
    from PIL import Image

    pixels = torch.stack([lm.preprocess(Image.fromarray(im)) for im in batch.images])
    masks = np.stack([imageio.mask_to_crop(m, size) for m in batch.masks])
    colour = world.FACTOR_NAMES.index("colour")
    cls = class_embeddings(
        lambda t: s.text_embeddings(list(t)), prompts=world.value_texts("colour")
    )  # [class, d_embed]
    directions = cls[batch.codes[:, colour].astype(np.int64)]  # [image, d_embed]
    return EvalSet(pixels, masks, directions, f"world:{n}:seed{seed + WORLD_SEED_OFFSET}", "colour")


def _folder_set(s, images: str | None, masks: str, text: str | None) -> EvalSet:
    if not images:
        raise UserError("--masks DIR needs --images DIR (the images the masks belong to)")
    root, mroot = Path(images), Path(masks)
    if not mroot.is_dir():
        raise UserError(f"mask folder {masks} does not exist")
    if not root.is_dir():
        raise UserError(f"image folder {images} does not exist")
    lm = s.model()
    size = lm.dims.image_size
    pix, ms, texts = [], [], []
    for path in imageio.discover(root):
        rel = path.relative_to(root)
        mpath = (mroot / rel).with_suffix(".png")
        if not mpath.is_file():
            continue
        try:
            img = imageio.decode_file(path).image
            mask = imageio.read_mask(mpath)
        except imageio.ImageRejected as e:
            raise UserError(f"cannot read {rel}: {e}") from None
        if mask.shape != (img.height, img.width):
            raise UserError(f"mask {mpath.name} is {mask.shape[::-1]}, image is {img.size}")
        pix.append(lm.preprocess(img))
        ms.append(imageio.mask_to_crop(mask, size))
        cls = imageio.class_of(path, root)
        if text is None and cls is None:
            raise UserError(f"{rel} has no class folder: give --text")
        texts.append(text or f"a photo of a {cls}")
    if not pix:
        raise UserError(f"no image under {images} has a same-named .png mask under {masks}")
    uniq = sorted(set(texts))
    emb = s.text_embeddings(uniq)
    directions = emb[[uniq.index(t) for t in texts]]
    return EvalSet(torch.stack(pix), np.stack(ms), directions, f"folder:{images}", text or "class")


def _maps(lm, w, layers: list[int], ev: EvalSet, batch_size: int, bar=None) -> np.ndarray:
    """Per-patch maps of every stored head -> [image, layer, head, grid, grid] float32."""
    from engine.core.pooling import PooledWeights, pooled_patch_maps
    from engine.model.timm_tower import capture_pooled

    pooled = isinstance(w, PooledWeights)  # SigLIP: per-token terms weighted by the pool
    out = []
    for s in range(0, len(ev.pixels), batch_size):
        pixels = ev.pixels[s : s + batch_size]
        cap = capture_pooled(lm.model, pixels, layers) if pooled else capture(lm, pixels, layers)
        for i in range(cap.output.shape[0]):
            d = torch.from_numpy(ev.directions[s + i])
            maps = pooled_patch_maps if pooled else patch_maps
            out.append(maps(w, cap, i, layers, None, d).numpy())
            if bar is not None:
                bar.update(1)
    return np.stack(out)


def _score_rows(maps: np.ndarray, masks: np.ndarray, layers: list[int], sets: dict) -> list[dict]:
    """Rows of scores: each head, each named set, the aggregate of every head."""
    rows = []

    def add(scope: str, name: str, m: np.ndarray, layer=None, head=None) -> None:
        mean = segmetrics.score_maps(m, masks).mean()
        rows.append(
            {"scope": scope, "name": name, "layer": layer, "head": head,
             "n_images": int(mean["n_images"]), **{k: float(mean[k]) for k in METRICS}}
        )  # fmt: skip

    for li, layer in enumerate(layers):
        for h in range(maps.shape[2]):
            add("head", head_name(layer, h), maps[:, li, h], layer, h)
    for name, heads in sets.items():
        idx = [(layers.index(l), h) for l, h in heads]
        add("set", name, sum(maps[:, li, h] for li, h in idx))
    add("aggregate", "all stored heads", maps.sum(axis=(1, 2)))
    return rows


def run_segeval(p: SegEvalParams, progress: bool = True) -> SegEvalResult:
    """Score every stored head's maps (and each head set, and all heads summed) against
    masks, with the store's verified model; recorded in the store unless `write` is off."""
    t0 = time.perf_counter()
    started = provenance.now()
    with StoreSession.open(p.store) as s:
        _check(p, s.layers)
        if p.masks == "world" and not s.meta.factors:
            raise UserError("--masks world needs a demo-world store (built from synthetic:N)")
        s.model()  # verified against the store's weights before any work
        if p.masks == "world":
            ev = _world_set(s, p.n_images)
        else:
            ev = _folder_set(s, p.images, p.masks, p.text)
        t_setup = time.perf_counter() - t0
        maps = _all_maps(s, ev, p.batch_size, progress)
        t_maps = time.perf_counter() - t0 - t_setup
        rows = pd.DataFrame(_score_rows(maps, ev.masks, s.layers, p.head_sets))
        run_id = uuid.uuid4().hex
        rows.insert(0, "run_id", run_id)
        rows["source"], rows["text"] = ev.source, ev.text
        timings = {"setup_s": round(t_setup, 3), "maps_s": round(t_maps, 3),
                   "wall_s": round(time.perf_counter() - t0, 3)}  # fmt: skip
        if p.write:
            params = {"masks": p.masks, "images": p.images, "text": p.text,
                      "n_images": len(ev.pixels),
                      "head_sets": {k: [list(h) for h in v] for k, v in p.head_sets.items()}}  # fmt: skip
            run = provenance.run_record("segeval", run_id, s, params, timings, started)
            with mutate_store(p.store, expect_version=s.version_path) as w:
                w.append("segmentation_scores", rows)
                w.record_run(run)
    return SegEvalResult(run_id, rows, ev.source, ev.text, timings)


def _check(p: SegEvalParams, layers: list[int]) -> None:
    if not layers:
        raise UserError(f"{p.store} stores no heads to score")
    if p.n_images < 1 or p.batch_size < 1:
        raise UserError("--n-images and --batch-size must be at least 1")
    for name, heads in p.head_sets.items():
        bad = [head_name(l, h) for l, h in heads if l not in layers]
        if bad:
            raise UserError(f"set {name!r}: heads {bad} are not stored (stored layers {layers})")
    if p.masks != "world" and p.images is None:
        raise UserError("--masks DIR needs --images DIR (or use --masks world)")


def _all_maps(s, ev: EvalSet, batch_size: int, progress: bool) -> np.ndarray:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ev.pixels), unit="img", desc="segeval maps")
    try:
        return _maps(s.model(), s.vision_weights(), s.layers, ev, batch_size, bar)
    finally:
        if bar is not None:
            bar.close()


def summary_json(res: SegEvalResult) -> str:
    return json.dumps(
        {"run_id": res.run_id, "source": res.source, "text": res.text, "timings": res.timings,
         "aggregate": res.aggregate(), "rows": res.rows.drop(columns=["run_id"]).to_dict("records")},
        indent=2, default=float,
    )  # fmt: skip
