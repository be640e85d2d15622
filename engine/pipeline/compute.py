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

from engine.pipeline.rows import BatchDecomposer
from engine.sources.collection import Item


def compute_batch(decomposer: BatchDecomposer, pixels: torch.Tensor) -> dict[str, np.ndarray]:
    """Decompose a batch `pixels [image, 3, H, W]` into per-image rows {array name: [image, ...]}
    (every per-image array of `engine.store.schema.ARRAYS` except the thumbnail): the heads in
    their coordinates, the complete decomposition, std and output. Checked against encode_image
    first (`ReconstructionError`: nothing of the batch is returned, so nothing is stored)."""
    return decomposer.rows(pixels)


@dataclass
class ChunkRows:
    """One chunk computed: rows[name][:n] hold its n good images, in source order."""

    rows: dict[str, np.ndarray] | None  # [chunk, ...] buffers; None when no image was good
    n: int = 0
    images: list[dict] = field(default_factory=list)  # metadata of the good images
    skipped: list[dict] = field(default_factory=list)  # {path, reason} of the rejected items
    timings: dict = field(default_factory=lambda: {"decode_wait_s": 0.0, "compute_s": 0.0})
    reconstruction_error: float = 0.0  # worst batch's max |output - Σ terms| / max ||output||


def compute_chunk(
    decomposer: BatchDecomposer,
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
        before = decomposer.worst_error
        decomposer.worst_error = 0.0
        rows = compute_batch(decomposer, pixels)
        out.reconstruction_error = max(out.reconstruction_error, decomposer.worst_error)
        decomposer.worst_error = max(before, decomposer.worst_error)
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
