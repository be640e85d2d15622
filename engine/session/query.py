"""The query image every image analysis works on, and its decomposition."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImageQuery:
    """An image to analyse. `sha`: its identity (caches key on it); `store_index`: its row when
    it is one of the store's images (its stored contributions are then used for rankings, and
    it is left out of its own neighbours)."""

    image: Image.Image
    sha: str
    label: str = ""
    store_index: int | None = None

    @classmethod
    def from_image(cls, image: Image.Image, label: str = "") -> ImageQuery:
        """Any PIL image (identity: the SHA-256 of its RGB pixels)."""
        rgb = image.convert("RGB")
        sha = hashlib.sha256(rgb.tobytes() + repr(rgb.size).encode()).hexdigest()
        return cls(rgb, sha, label or "image")


@dataclass
class ImageAnalysis:
    """One decomposition of a query image.

    head_out: [layer, head, d_embed] (the store's layers); output: [d_embed] (`encode_image`);
    layers: the stored layers; capture: the hooked activations (for per-patch maps)."""

    head_out: np.ndarray
    output: np.ndarray
    layers: list[int]
    capture: object

    def heads_out(self, heads: list[tuple[int, int]]) -> np.ndarray:
        """The contributions of `heads` -> [head, d_embed]."""
        pos = {l: i for i, l in enumerate(self.layers)}
        return np.stack([self.head_out[pos[l], h] for l, h in heads])
