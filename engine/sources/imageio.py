"""Safe image discovery and decoding: EXIF orientation, any mode to RGB, hostile files rejected.

Every rejection is an `ImageRejected` with a one-line reason; a folder build lists them and goes
on. `load_upload` applies the same checks to uploaded bytes and raises `UserError` instead.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
MAX_PIXELS = 50_000_000  # larger images are treated as decompression bombs
MAX_FILE_BYTES = 200 * 2**20
MAX_UPLOAD_BYTES = 50 * 2**20
MAX_ASPECT = 20.0  # uploads only: wider/taller than 20:1 is refused


class ImageRejected(Exception):
    """A file that cannot be used as an image; str(e) is the one-line reason."""


@dataclass
class DecodedImage:
    """An RGB image ready for preprocessing plus the facts stored in the `images` table."""

    image: Image.Image  # mode RGB, EXIF orientation applied
    sha256: str
    width: int  # after EXIF orientation, before any draft downscale
    height: int


def discover(root: str | os.PathLike) -> list[Path]:
    """Image files under `root`, recursively, sorted by relative path; hidden entries skipped."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def class_of(path: Path, root: Path) -> str | None:
    """Class label = the image's parent folder name; None for files at the top level of `root`."""
    rel = Path(path).relative_to(root)
    return rel.parent.name if len(rel.parts) > 1 else None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: alpha composited on white, 16-bit/float scaled to 8 bits, CMYK/P/L."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        in_16bit = arr.size and 0 <= arr.min() and arr.max() < 65536
        if mode.startswith("I;16") or (mode == "I" and in_16bit):
            arr = arr / 257.0  # 16-bit range -> 8-bit
        else:  # float or wide ints: min-max stretch
            lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 1.0)
            arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")  # CMYK, P, L, 1, YCbCr, LAB, HSV


def decode_bytes(data: bytes, *, max_side: int | None = None) -> DecodedImage:
    """Decode image bytes safely; raise ImageRejected with a one-line reason.

    max_side: if given, JPEG decoding may be downscaled (PIL draft) to no less than this size.
    """
    if len(data) == 0:
        raise ImageRejected("empty file (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise ImageRejected(
                    f"decompression bomb: {w}x{h} = {w * h:,} pixels > {MAX_PIXELS:,}"
                )
            if w == 0 or h == 0:
                raise ImageRejected(f"degenerate size {w}x{h}")
            img.seek(0)  # first frame of animations
            if max_side and img.format == "JPEG":
                img.draft("RGB", (max_side, max_side))
            img.load()
            try:
                orientation = int(img.getexif().get(0x0112, 1) or 1)
            except Exception:  # malformed EXIF: keep the pixels as stored
                orientation = 1
            img = ImageOps.exif_transpose(img) or img
            rgb = to_rgb(img)
            rgb.load()
        except ImageRejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageRejected(f"decompression bomb: {e}") from None
        except UnidentifiedImageError:
            raise ImageRejected("not an image (format not recognised)") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ImageRejected(f"unreadable image: {msg}") from None
        except Exception as e:  # a decoder plugin failing in any other way: still just a skip
            msg = str(e).splitlines()[0] if str(e) else ""
            raise ImageRejected(f"unreadable image: {type(e).__name__} {msg}".strip()) from None
    ow, oh = (h, w) if orientation in (5, 6, 7, 8) else (w, h)  # these orientations transpose
    return DecodedImage(image=rgb, sha256=digest, width=ow, height=oh)


def decode_file(path: str | os.PathLike, *, max_side: int | None = None) -> DecodedImage:
    """Read and decode one file; ImageRejected (with reason) for anything unusable."""
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ImageRejected(f"file too large ({size:,} bytes > {MAX_FILE_BYTES:,})")
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageRejected(f"cannot read file: {e.strerror or e}") from None
    return decode_bytes(data, max_side=max_side)


def load_upload(data: bytes) -> Image.Image:
    """An uploaded image as RGB PIL image; UserError with a one-line reason if unusable."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise UserError(f"upload too large ({len(data):,} bytes > {MAX_UPLOAD_BYTES:,})")
    try:
        img = decode_bytes(data).image
    except ImageRejected as e:
        raise UserError(f"cannot use this upload: {e}") from None
    w, h = img.size
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise UserError(f"cannot use this upload: {w}x{h} is beyond {MAX_ASPECT:.0f}:1")
    return img


def thumbnail(img: Image.Image, size: int) -> np.ndarray:
    """Letterboxed RGB thumbnail, uint8 [size, size, 3] (aspect kept, black borders)."""
    small = ImageOps.pad(img, (size, size), method=Image.Resampling.BILINEAR, color=(0, 0, 0))
    return np.asarray(small.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A ground-truth mask PNG -> bool [H, W] (any non-zero pixel is the object)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("L")) > 0
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ImageRejected(f"unreadable mask: {e}") from None


def mask_to_crop(mask: np.ndarray, size: int) -> np.ndarray:
    """A mask bool [H, W] through the model's preprocessing geometry (shortest side resized to
    `size`, centre crop `size` x `size`), nearest-neighbour -> bool [size, size]."""
    im = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.NEAREST)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size))) > 127
