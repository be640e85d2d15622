"""Turning bytes (uploads, bundled samples) into the query image: decoding goes through
`engine.sources.imageio`; this module adds what the sidebar says about the conversion."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from dashboard import settings
from dashboard.query import QueryImage
from engine.sources.imageio import load_upload


def sample_paths() -> list[Path]:
    return sorted(settings.SAMPLES.glob("*.png"))


def conversion_notes(data: bytes) -> tuple[str, ...]:
    """What decoding changed about an (already accepted) upload, read from its header."""
    notes = []
    try:
        with Image.open(io.BytesIO(data)) as im:
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"animated ({im.n_frames} frames): the first frame is analysed")
            mode = im.mode
            if "A" in mode or (mode == "P" and "transparency" in im.info):
                notes.append("transparency composited on white")
            elif mode == "CMYK":
                notes.append("CMYK converted to RGB")
            elif mode.startswith("I") or mode == "F":
                notes.append(f"{mode} (high bit depth) scaled to 8-bit RGB")
            elif mode in ("L", "1", "P", "LA"):
                notes.append(f"mode {mode} converted to RGB")
    except Exception:  # the decoder already accepted it; notes are best effort
        pass
    return tuple(notes)


def query_from_bytes(data: bytes, label: str) -> QueryImage:
    """Decode an upload; UserError with one clear reason if unusable."""
    image = load_upload(data)
    return QueryImage(image, hashlib.sha256(data).hexdigest(), label, notes=conversion_notes(data))
