"""The build's compute step: a batch of pixels -> the per-image rows the store keeps.

`compute_batch` is the one place that decides what is computed per image; `compute_chunk` runs it
over the decoded items of one chunk and fills the chunk's row buffers (their names, dtypes and
trailing shapes are taken from what `compute_batch` returns, plus the thumbnails). No file I/O.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.core import decompose
from engine.core.types import ViTWeights
from engine.model import LoadedModel, capture
from engine.sources.collection import Item


@torch.no_grad()
def compute_batch(
    lm: LoadedModel, weights: ViTWeights, layers: list[int], pixels: torch.Tensor
) -> dict[str, np.ndarray]:
    """Decompose a batch `pixels [image, 3, H, W]` into per-image rows {array name: [image, ...]}
    (every name an array of `engine.store.schema.ARRAYS` except the thumbnail)."""
    cap = capture(lm, pixels.to(lm.device), layers)
    dec = decompose.decompose(weights, cap, layers)
    return {
        "head_out": dec.head_out.to(torch.float16).cpu().numpy(),
        "output": dec.output.float().cpu().numpy(),
        "resid_norm": cap.resid.float().norm(dim=-1).cpu().numpy(),
        "ln_scale": dec.resid_std.float().cpu().numpy(),
    }


@dataclass
class ChunkRows:
    """One chunk computed: rows[name][:n] hold its n good images, in source order."""

    rows: dict[str, np.ndarray] | None  # [chunk, ...] buffers; None when no image was good
    n: int = 0
    images: list[dict] = field(default_factory=list)  # metadata of the good images
    skipped: list[dict] = field(default_factory=list)  # {path, reason} of the rejected items
    timings: dict = field(default_factory=lambda: {"decode_wait_s": 0.0, "compute_s": 0.0})


def compute_chunk(
    lm: LoadedModel,
    weights: ViTWeights,
    layers: list[int],
    items: Iterable[tuple[int, Item]],
    chunk: int,
    batch_size: int,
) -> ChunkRows:
    """Batch the good items of one chunk (at most `chunk` of them) through `compute_batch`."""
    out = ChunkRows(None)
    batch: list[Item] = []

    def flush() -> None:
        t0 = time.perf_counter()
        pixels = torch.stack([it.pixels for it in batch])  # [image, 3, H, W]
        rows = compute_batch(lm, weights, layers, pixels)
        rows["thumbnail"] = np.stack([it.thumb for it in batch])
        if out.rows is None:
            out.rows = {k: np.zeros((chunk, *v.shape[1:]), v.dtype) for k, v in rows.items()}
        for name, value in rows.items():
            out.rows[name][out.n : out.n + len(batch)] = value
        out.n += len(batch)
        out.images.extend(it.meta for it in batch)
        batch.clear()
        out.timings["compute_s"] += time.perf_counter() - t0

    it = iter(items)
    while True:
        t0 = time.perf_counter()
        try:
            _, item = next(it)
        except StopIteration:
            break
        finally:
            out.timings["decode_wait_s"] += time.perf_counter() - t0
        if item.reason is not None:
            out.skipped.append({"path": item.meta["path"], "reason": item.reason})
            continue
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return out
