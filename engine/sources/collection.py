"""Image collections a build reads: a folder, the demo world (`synthetic:N`) or noise (`random:N`).

A `Source` is an ordered list of items; `load(i)` decodes item i (thread-safe) into the model's
pixels, a thumbnail and its metadata, or a rejection with its reason.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.errors import UserError
from engine.sources import imageio


@dataclass
class Item:
    """One image ready for the model, or a rejection."""

    pixels: torch.Tensor | None  # [3, H, W]
    thumb: np.ndarray | None  # uint8 [T, T, 3]
    meta: dict  # path, sha256, width, height, class (+ codes for synthetic images)
    reason: str | None = None  # set when rejected


class Source:
    """An ordered list of images; `load(i, preprocess, thumb_size)` decodes item i (thread-safe)
    into the model's pixels and a `thumb_size` thumbnail (the store's, given by the pipeline).

    image_size: the model's input size, set once the model is loaded (decoding hints).
    """

    n_items: int
    fingerprint: str
    describe: str
    factors: dict[str, tuple[str, ...]] | None = None
    image_size: int | None = None

    def load(self, i: int, preprocess: Callable, thumb_size: int) -> Item:
        raise NotImplementedError


class FolderSource(Source):
    def __init__(self, root: str):
        self.root = Path(root)
        if not self.root.exists():
            raise UserError(f"image folder {root} does not exist")
        if not self.root.is_dir():
            raise UserError(f"{root} is not a folder (use a folder, synthetic:N or random:N)")
        self.files = imageio.discover(self.root)
        if not self.files:
            exts = ", ".join(sorted(e.lstrip(".") for e in imageio.IMAGE_EXTENSIONS))
            raise UserError(f"no image files ({exts}) found under {root}")
        self.n_items = len(self.files)
        h = hashlib.sha256()
        for p in self.files:  # cheap fingerprint: relative path, size, mtime
            st = p.stat()
            h.update(
                f"{p.relative_to(self.root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode()
            )
        self.fingerprint = "files:" + h.hexdigest()[:32]
        self.describe = str(self.root.resolve())

    def load(self, i: int, preprocess: Callable, thumb_size: int) -> Item:
        path = self.files[i]
        rel = path.relative_to(self.root).as_posix()
        try:
            d = imageio.decode_file(path, max_side=self.image_size)
        except imageio.ImageRejected as e:
            return Item(None, None, {"path": rel}, reason=str(e))
        meta = {
            "path": rel,
            "sha256": d.sha256,
            "width": d.width,
            "height": d.height,
            "class": imageio.class_of(path, self.root),
        }
        return Item(preprocess(d.image), imageio.thumbnail(d.image, thumb_size), meta)


class SyntheticSource(Source):
    """The demo world (`engine.sources.world.generate`), image i depends only on (seed, i)."""

    def __init__(self, n: int, seed: int):
        from engine.sources import world

        self.world = world
        self.n_items, self.seed = n, seed
        probe = world.generate(0, 1, seed)  # changes if the world's renderer changes
        digest = hashlib.sha256(probe.images.tobytes() + probe.codes.tobytes()).hexdigest()[:12]
        self.fingerprint = f"synthetic:{n}:{seed}:{digest}"
        self.describe = f"synthetic:{n}:{seed}"
        self.factors = dict(world.FACTORS)

    def load(self, i: int, preprocess: Callable, thumb_size: int) -> Item:
        batch = self.world.generate(i, i + 1, self.seed)
        arr = batch.images[0]  # uint8 [H, W, 3]
        img = Image.fromarray(arr)
        meta = {
            "path": f"synthetic:{self.seed}/{i}",
            "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
            "width": arr.shape[1],
            "height": arr.shape[0],
            "class": None,
            "codes": [int(c) for c in batch.codes[0]],
        }
        return Item(preprocess(img), imageio.thumbnail(img, thumb_size), meta)


class RandomSource(Source):
    """Uniform-noise images (for benchmarks); image i depends only on (seed, i)."""

    def __init__(self, n: int, seed: int):
        self.n_items, self.seed = n, seed
        self.fingerprint = f"random:{n}:{seed}"
        self.describe = f"random:{n}:{seed}"

    @property
    def size(self) -> int:
        return max(self.image_size or 224, 32)  # noise at the model's input size

    def load(self, i: int, preprocess: Callable, thumb_size: int) -> Item:
        rng = np.random.default_rng([self.seed, i])
        arr = rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
        img = Image.fromarray(arr)
        meta = {
            "path": f"random:{self.seed}/{i}",
            "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
            "width": self.size,
            "height": self.size,
            "class": None,
        }
        return Item(preprocess(img), imageio.thumbnail(img, thumb_size), meta)


def parse_source(images: str) -> Source:
    """A folder, `synthetic:N[:seed]` or `random:N[:seed]`."""
    for kind in ("synthetic", "random"):
        if images.startswith(kind + ":"):
            parts = images.split(":")[1:]
            try:
                if not 1 <= len(parts) <= 2:
                    raise ValueError
                n, seed = int(parts[0]), int(parts[1]) if len(parts) == 2 else 0
                if n < 1 or seed < 0:
                    raise ValueError
            except ValueError:
                raise UserError(
                    f"bad --images {images!r}: use {kind}:N or {kind}:N:SEED (N >= 1)"
                ) from None
            if kind == "synthetic":
                return SyntheticSource(n, seed)
            return RandomSource(n, seed)
    return FolderSource(images)


def ordered_stream(
    pool: ThreadPoolExecutor, fn: Callable[[int], Item], indices: Iterable[int], lookahead: int
) -> Iterator[tuple[int, Item]]:
    """fn(i) for i in `indices` computed in the pool, yielded in order, <= lookahead ahead."""
    pending: deque = deque()
    todo = iter(indices)
    more = True
    while more or pending:
        while more and len(pending) < lookahead:
            i = next(todo, None)
            if i is None:
                more = False
                break
            pending.append((i, pool.submit(fn, i)))
        if pending:
            i, fut = pending.popleft()
            yield i, fut.result()
