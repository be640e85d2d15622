"""The query image: what every analysis page works on (a value; the sidebar picks it)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageOps

from dashboard.settings import DISPLAY_SIZE
from engine.session.query import ImageQuery


@dataclass(frozen=True)
class QueryImage(ImageQuery):
    """The image every analysis works on: the session's `ImageQuery` (image, sha, label,
    store_index) plus what the dashboard shows about it.

    ``sha``: its cache key (sha256 of the upload's bytes, or the stored image's key);
    ``store_index``: its row when picked from the store; ``notes``: what decoding the upload
    did; ``duplicate_of``: the stored image whose pixels an upload repeats exactly (it is then
    its own best neighbour)."""

    notes: tuple[str, ...] = ()
    duplicate_of: int | None = None

    def crop(self, size: int = DISPLAY_SIZE) -> np.ndarray:
        """The square centre crop the model sees, for drawing maps on: uint8 [size, size, 3]."""
        fitted = ImageOps.fit(self.image, (size, size), Image.Resampling.BICUBIC)
        return np.asarray(fitted.convert("RGB"), dtype=np.uint8)

    def pixel_sha(self) -> str:
        """sha256 of the decoded RGB pixels (how the store hashes generated images)."""
        import hashlib

        rgb = np.ascontiguousarray(np.asarray(self.image.convert("RGB"), dtype=np.uint8))
        return hashlib.sha256(rgb.tobytes()).hexdigest()

    def with_duplicate(self, image_id: int | None) -> QueryImage:
        return replace(self, duplicate_of=image_id)
