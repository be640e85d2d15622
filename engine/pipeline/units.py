"""Per-unit precomputation for the unit pages, riding on interpret's one pass over the store.

`UnitPrecompute` is fed each head's coordinates `[image, d_head]` as interpret reads them (no
second read of `coord`): it keeps the head's summary (`engine.core.units.summarise_head`: first
principal direction, top/bottom-k images, histograms, variance). Afterwards `compute_maps`
re-reads only the 2k extreme images of every head from the store's image source (a folder, the
demo world) and runs the store's model on them once each, batched, to get each head's per-patch
map along its direction; `frames()` gives the rows of the declared unit tables
(`schema.UNIT_TABLES`), written by interpret in its one `mutate_store`.

Maps are skipped, with the reason recorded in `unit_summary.maps`, when the store holds random
data (no image made it), when the model cannot be loaded here, or per image when its source file
is gone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from engine.core import units
from engine.core.layers import head_name
from engine.errors import UserError
from engine.sources import imageio

MAP_BATCH = 64  # images per model forward pass when computing maps
# the embedding's total variance (the denominator of a head's share) is taken over every image of
# stores up to this size, else over evenly spaced whole image chunks of about this many images
# (the exact share's relative sampling error is then ~1/sqrt(this), well under 1 %)
EMBED_VAR_SAMPLE = 65_536
N_TEXTS = 5  # bank texts kept nearest each sign of a unit's direction


class UnitPrecompute:
    """Accumulates unit summaries during interpret's pass; see the module doc."""

    def __init__(self, session, k: int = units.DEFAULT_K, maps: bool = True, bank=None):
        """`bank`: (texts, unit embeddings `[text, d_embed]`) of interpret's description bank:
        each unit keeps the `N_TEXTS` texts nearest each sign of its direction."""
        if k < 1:
            raise UserError("--unit-k must be at least 1")
        self.session = session
        reader = session.reader
        self.k = int(k)
        self.want_maps = bool(maps)
        self.info = dict(reader.info)
        self.n_images = int(self.info["n_images"])
        self.layers = list(reader.layers)
        self.summaries: dict[tuple[int, int], units.UnitSummary] = {}
        self.directions: dict[tuple[int, int], np.ndarray] = {}  # [d_embed] each
        self.maps: dict[tuple[int, int, int], tuple[np.ndarray, float]] = {}
        self.maps_status = "not computed"
        self.bank = bank
        self.texts: dict[tuple[int, int], tuple[list[str], list[str]]] = {}
        self.timings: dict[str, float] = {}
        t = time.perf_counter()
        out = reader.lazy("output")  # [image, d_embed], read in whole image chunks
        step = max(1, int(self.info.get("image_chunk") or 4096))
        starts = list(range(0, self.n_images, step))
        if len(starts) * step > EMBED_VAR_SAMPLE:  # evenly spaced chunks, ~EMBED_VAR_SAMPLE images
            pick = np.linspace(0, len(starts) - 1, max(1, EMBED_VAR_SAMPLE // step)).round()
            starts = [starts[int(i)] for i in np.unique(pick)]
        self.embed_var_images = sum(min(step, self.n_images - a) for a in starts)
        self.embed_var = units.total_variance(out[a : a + step] for a in starts)
        self._t_summary = time.perf_counter() - t

    def add(
        self, layer: int, head: int, coord: np.ndarray, basis: np.ndarray, moments=None
    ) -> None:
        """One head: coord `[image, d_head]` fp32 as read by interpret, basis `[d_head, d_embed]`,
        `moments`: TextSpan's `head_moments(coord)` when it has them (not computed twice)."""
        t = time.perf_counter()
        s = units.summarise_head(coord, self.k, moments=moments)
        self.summaries[(layer, head)] = s
        self.directions[(layer, head)] = s.embed_direction(basis)
        if self.bank is not None:
            texts, emb = self.bank
            scores = np.asarray(emb, np.float32) @ self.directions[(layer, head)]  # [text]
            along = units.top_k(scores, N_TEXTS).index
            against = units.bottom_k(scores, N_TEXTS)[0]
            self.texts[(layer, head)] = ([texts[i] for i in along], [texts[i] for i in against])
        self._t_summary += time.perf_counter() - t

    # ---- per-patch maps on the extreme images

    def compute_maps(self, progress: bool = False) -> None:
        """Per-patch maps of every head on its top and bottom images (model on 2k images/head)."""
        t = time.perf_counter()
        try:
            why = why_no_maps(self.want_maps, self.info) or self._maps(progress)
            self.maps_status = why or "computed"
        finally:
            self.timings["unit_summaries_s"] = round(self._t_summary, 3)
            self.timings["unit_maps_s"] = round(time.perf_counter() - t, 3)

    def _maps(self, progress: bool) -> str | None:
        from engine.model import capture

        got = maps_model(self.session)
        if isinstance(got, str):
            return got
        lm, w = got
        loader = ImageLoader.of_session(self.session, lm.preprocess)
        want: dict[int, list[tuple[int, int]]] = {}  # image -> heads that show it
        for key, s in self.summaries.items():
            for i in np.concatenate([s.top, s.bottom]).tolist():
                want.setdefault(int(i), []).append(key)
        ids = sorted(want)
        layers = sorted({l for l, _ in self.summaries})
        d_embed = len(next(iter(self.directions.values())))
        dirs = {l: torch.zeros(w.n_heads, d_embed) for l in layers}  # [head, d_embed] per layer
        for (l, h), d in self.directions.items():
            dirs[l][h] = torch.from_numpy(d)
        for batch in loader.batches(ids, "unit maps", progress):
            pixels = torch.stack([p for _, p in batch])
            if self.session.pooled:  # SigLIP: maps through the frozen pool, no class token
                from engine.model.timm_tower import capture_pooled
                from engine.session.pooled import layer_maps

                cap = capture_pooled(lm.model, pixels, layers)
            else:
                cap, layer_maps = capture(lm, pixels, layers), units.layer_maps
            for l in layers:  # every head of the layer on every image of the batch at once
                maps, cls = layer_maps(w, cap, l, dirs[l])  # [image, head, grid²], [i, h]
                for j, (i, _) in enumerate(batch):
                    for ll, h in want[i]:
                        if ll == l:
                            self.maps[(l, h, i)] = (maps[j, h].numpy().copy(), float(cls[j, h]))
        return loader.unreadable(ids)

    # ---- rows of the unit tables

    def frames(self, run_id: str) -> dict[str, pd.DataFrame]:
        summ, ex, hist = [], [], []
        for (l, h), s in self.summaries.items():
            share = s.total_var / self.embed_var if self.embed_var > 0 else float("nan")
            summ.append(
                (l, h, head_name(l, h), self.n_images, s.total_var, share,
                 self.embed_var_images, s.explained, s.mean_proj,
                 self.directions[(l, h)].tolist(), self.k, self.maps_status,
                 *(json.dumps(t) for t in self.texts.get((l, h), (None, None))), run_id)
            )  # fmt: skip
            for side, idx, proj in (
                ("top", s.top, s.top_proj),
                ("bottom", s.bottom, s.bottom_proj),
            ):
                for rank, (i, p) in enumerate(zip(idx.tolist(), proj.tolist(), strict=True)):
                    m = self.maps.get((l, h, int(i)))
                    ex.append(
                        (l, h, side, rank, int(i), float(p),
                         None if m is None else m[0].tolist(), None if m is None else m[1], run_id)
                    )  # fmt: skip
            for q, hg in (("norm", s.norm_hist), ("projection", s.proj_hist)):
                for b, c in enumerate(hg.counts.tolist()):
                    hist.append((l, h, q, b, float(hg.edges[b]), float(hg.edges[b + 1]), c, run_id))
        return {
            "unit_summary": pd.DataFrame(summ, columns=[
                "layer", "head", "unit", "n_images", "total_var", "variance_share",
                "embed_var_images", "explained", "mean_proj", "direction", "k", "maps",
                "texts_along", "texts_against", "run_id"]),
            "unit_examples": pd.DataFrame(ex, columns=[
                "layer", "head", "side", "rank", "image_id", "projection", "map", "map_cls",
                "run_id"]),
            "unit_histograms": pd.DataFrame(hist, columns=[
                "layer", "head", "quantity", "bin", "lo", "hi", "count", "run_id"]),
        }  # fmt: skip

    def write(self, writer, run_id: str) -> None:
        """Replace the unit tables inside interpret's `mutate_store` (a `StoreWriter`)."""
        from engine.store.unit_tables import replace_unit_tables

        replace_unit_tables(writer, self.frames(run_id))


def why_no_maps(wanted: bool, info: dict) -> str | None:
    """Why no maps are made before trying (not asked for, no image behind the rows), or None."""
    if not wanted:
        return "not requested"
    if info.get("random_data"):
        return "random data: no image behind the stored rows"
    return None


def maps_model(session):
    """(LoadedModel, vision weights) of the store's model for the maps (verified against the
    store's weights), or the one-line reason it cannot be loaded here."""
    try:
        return session.model(), session.vision_weights()
    except UserError as e:
        return f"model not loadable here: {e}"


class ImageLoader:
    """A stored image's pixels from the store's source: `synthetic:`/`random:` items are
    regenerated from their index, folder images re-read from `images_source / path`."""

    @classmethod
    def of_session(cls, session, preprocess) -> ImageLoader:
        """The store's loader. Reads the image paths, so only when maps are made (1M rows: ~1 s,
        for nothing on random data)."""
        return cls(session.reader.info, session.reader.images()["path"].tolist(), preprocess)

    def batches(self, ids: list[int], desc: str, progress: bool):
        """The readable images of `ids`, in batches of at most MAP_BATCH `[(image_id, [3, H, W])]`
        (empty batches skipped; `self.missing` counts the unreadable), with a progress bar."""
        self.missing = 0
        with tqdm(total=len(ids), desc=desc, unit="image", disable=not progress) as bar:
            for a in range(0, len(ids), MAP_BATCH):
                batch = []
                for i in ids[a : a + MAP_BATCH]:
                    px = self.pixels(i)
                    if px is None:
                        self.missing += 1
                    else:
                        batch.append((i, px))
                bar.update(len(ids[a : a + MAP_BATCH]))
                if batch:
                    yield batch

    def unreadable(self, ids: list[int]) -> str | None:
        """After `batches(ids)`: the reason no map was made when no image could be read."""
        return "the store's images are not readable here" if self.missing == len(ids) else None

    def __init__(self, info: dict, paths: list[str], preprocess):
        self.paths, self.preprocess = paths, preprocess
        self.missing = 0
        src = str(info.get("images_source") or "")
        self.source = None
        self.root = None
        if src.startswith(("synthetic:", "random:")):
            from engine.sources.collection import parse_source

            self.source = parse_source(src)
            self.source.image_size = int(info.get("image_size") or 224)
        elif src:
            self.root = Path(src)

    def pixels(self, image_id: int) -> torch.Tensor | None:
        """`[3, H, W]` or None when the image cannot be read."""
        path = str(self.paths[image_id])
        try:
            if self.source is not None:
                item = self.source.load(int(path.rsplit("/", 1)[1]), self.preprocess, 16)
                return item.pixels  # (a small thumbnail is made alongside and dropped)
            if self.root is not None:
                d = imageio.decode_file(self.root / path)
                return self.preprocess(d.image)
        except (OSError, ValueError, IndexError, UserError, imageio.ImageRejected):
            return None  # an unreadable image (gone, changed, rejected) simply has no map
        return None
