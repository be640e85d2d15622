"""Segmentation maps scored against binary masks (math only: numpy, no I/O).

The protocol follows the TextSpan paper's ImageNet-segmentation evaluation (Gandelsman et al.,
"Interpreting CLIP's image representation via text-based decomposition"), as its published
evaluation script does it, per image (the script runs with batch size 1, so its min, max and
mean are per image):

1. upsample the [grid, grid] map to the mask's [H, W] **bilinearly** (half-pixel centres, edges
   clamped: PyTorch's `interpolate(mode="bilinear", align_corners=False)`);
2. clip negative values to 0 and min-max scale to [0, 1] (a constant map becomes all zeros);
3. foreground = pixels **above the mean** of the scaled map, background = the rest;
4. pixel accuracy = share of pixels whose foreground/background call matches the mask;
   IoU of the foreground and of the background; mIoU = their mean. Over a collection the paper
   pools intersections and unions over all pixels of all images per class before the mean
   (`SegScores.mean()["miou"]`); the mean of per-image mIoU is reported too;
5. AP = average precision (the step-wise sum Σ (Rₙ − Rₙ₋₁) Pₙ over distinct scores, ties taken
   together) of the two-channel prediction the paper scores: background pixels ranked by
   1 − map and foreground pixels by map, pooled in one ranking; mAP = its mean over images.
   `ap_fg` is the plainer reading, the map's values as scores for the foreground pixels alone
   (NaN for an image without foreground).

Added here: the pointing game. The hottest patch of the raw [grid, grid] map (first maximum in
row-major order) is a hit when the mask covers more than `min_cover` of that patch's pixels
(default 0: any object pixel). Patch (r, c) covers mask rows floor(r·H/grid)…floor((r+1)·H/grid)
and likewise for columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CHUNK = 64  # images upsampled at a time (bounds memory at CHUNK x H x W floats)


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of 1-d linear interpolation with half-pixel centres."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w_hi = src - lo
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), lo), 1.0 - w_hi)
    np.add.at(m, (np.arange(n_out), hi), w_hi)
    return m


def upsample_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling (align_corners=False): maps [image, grid, grid] -> [image, H, W]."""
    maps = np.asarray(maps, np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must be [image, grid, grid]; got {maps.shape}")
    ry = _interp_matrix(maps.shape[1], size[0])  # [H, grid]
    rx = _interp_matrix(maps.shape[2], size[1])  # [W, grid]
    return np.einsum("hg,igk,wk->ihw", ry, maps, rx, optimize=True)


def scale_maps(up: np.ndarray) -> np.ndarray:
    """Step 2: clip below 0, min-max scale each image's map to [0, 1] (constant -> zeros)."""
    up = np.clip(up, 0.0, None)
    lo = up.min(axis=(1, 2), keepdims=True)
    rng = up.max(axis=(1, 2), keepdims=True) - lo
    return np.where(rng > 0, (up - lo) / np.where(rng > 0, rng, 1.0), 0.0)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP = Σ (Rₙ − Rₙ₋₁) Pₙ over distinct score thresholds, high to low (NaN without positives)."""
    scores = np.asarray(scores, np.float64).ravel()
    positive = np.asarray(positive, bool).ravel()
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    tp = np.cumsum(p)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each tie group
    tp, k = tp[last], last + 1
    recall = tp / n_pos
    precision = tp / k
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _cell_bounds(n: int, grid: int) -> np.ndarray:
    return (np.arange(grid + 1) * n) // grid


@dataclass(frozen=True)
class SegScores:
    """Per-image scores [image] and the counts needed to pool them.

    pixel_acc, iou_fg, iou_bg, miou (mean of the two IoUs; 0/0 counts as 1), ap (the paper's
    two-channel AP), ap_fg (foreground-only AP, NaN without foreground), pointing (bool),
    threshold (the mean of the scaled map), inter and union [image, 2] pixel counts for
    (background, foreground), n_pixels [image].
    """

    pixel_acc: np.ndarray
    iou_fg: np.ndarray
    iou_bg: np.ndarray
    miou: np.ndarray
    ap: np.ndarray
    ap_fg: np.ndarray
    pointing: np.ndarray
    threshold: np.ndarray
    inter: np.ndarray
    union: np.ndarray
    n_pixels: np.ndarray

    def __len__(self) -> int:
        return len(self.pixel_acc)

    @classmethod
    def concat(cls, parts: Sequence[SegScores]) -> SegScores:
        """Scores of several batches as one."""
        return cls(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__)
        )

    def mean(self) -> dict[str, float]:
        """Collection scores: pixel_acc pooled over pixels; miou pooled per class over all pixels
        then averaged over (background, foreground) (the paper); miou_image_mean; map (mean of
        per-image AP); ap_fg (mean over images with foreground); pointing (hit rate)."""
        if len(self) == 0:
            raise ValueError("no images scored")
        inter, union = self.inter.sum(axis=0), self.union.sum(axis=0)
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        fg = ~np.isnan(self.ap_fg)
        return {
            "n_images": len(self),
            "pixel_acc": float((self.pixel_acc * self.n_pixels).sum() / self.n_pixels.sum()),
            "miou": float(iou.mean()),
            "iou_bg": float(iou[0]),
            "iou_fg": float(iou[1]),
            "miou_image_mean": float(self.miou.mean()),
            "map": float(self.ap.mean()),
            "ap_fg": float(self.ap_fg[fg].mean()) if fg.any() else float("nan"),
            "pointing": float(self.pointing.mean()),
        }


def _iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def pointing_game(maps: np.ndarray, masks: np.ndarray, min_cover: float = 0.0) -> np.ndarray:
    """[image] bool: the hottest patch of maps [image, grid, grid] lies on masks [image, H, W]."""
    maps, masks = np.asarray(maps), np.asarray(masks, bool)
    n, gy, gx = maps.shape
    flat = maps.reshape(n, -1).argmax(axis=1)
    rows, cols = flat // gx, flat % gx
    by, bx = _cell_bounds(masks.shape[1], gy), _cell_bounds(masks.shape[2], gx)
    # patch coverage from a summed-area table: [image, H+1, W+1]
    sat = np.zeros((n, masks.shape[1] + 1, masks.shape[2] + 1), np.int64)
    sat[:, 1:, 1:] = masks.cumsum(axis=1).cumsum(axis=2)
    i = np.arange(n)
    y0, y1, x0, x1 = by[rows], by[rows + 1], bx[cols], bx[cols + 1]
    covered = sat[i, y1, x1] - sat[i, y0, x1] - sat[i, y1, x0] + sat[i, y0, x0]
    area = np.maximum((y1 - y0) * (x1 - x0), 1)
    return covered / area > min_cover


def _score_chunk(maps: np.ndarray, masks: np.ndarray, min_cover: float) -> SegScores:
    n, h, w = masks.shape
    s = scale_maps(upsample_bilinear(maps, (h, w)))  # [image, H, W] in [0, 1]
    thr = s.mean(axis=(1, 2))
    pred = s > thr[:, None, None]
    fg = masks
    inter_fg = (pred & fg).sum(axis=(1, 2))
    union_fg = (pred | fg).sum(axis=(1, 2))
    inter_bg = (~pred & ~fg).sum(axis=(1, 2))
    union_bg = (~pred | ~fg).sum(axis=(1, 2))
    correct = inter_fg + inter_bg
    iou_fg, iou_bg = _iou(inter_fg, union_fg), _iou(inter_bg, union_bg)
    ap = np.array(
        [
            average_precision(
                np.r_[1.0 - s[i].ravel(), s[i].ravel()], np.r_[~fg[i].ravel(), fg[i].ravel()]
            )
            for i in range(n)
        ]
    )
    ap_fg = np.array([average_precision(s[i], fg[i]) for i in range(n)])
    return SegScores(
        pixel_acc=correct / (h * w),
        iou_fg=iou_fg,
        iou_bg=iou_bg,
        miou=(iou_fg + iou_bg) / 2,
        ap=ap,
        ap_fg=ap_fg,
        pointing=pointing_game(maps, masks, min_cover),
        threshold=thr,
        inter=np.stack([inter_bg, inter_fg], axis=1),
        union=np.stack([union_bg, union_fg], axis=1),
        n_pixels=np.full(n, h * w, np.int64),
    )


def score_maps(maps: np.ndarray, masks: np.ndarray, *, min_cover: float = 0.0) -> SegScores:
    """Score maps [image, grid, grid] against masks [image, H, W] (bool, True = object).

    Any map values work (a head's per-patch contribution along a text direction, an aggregate);
    see the module docstring for the protocol. Images are processed CHUNK at a time.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim != 3 or masks.ndim != 3 or maps.shape[0] != masks.shape[0]:
        raise ValueError(
            f"need maps [image, grid, grid] and masks [image, H, W]; got {maps.shape}, {masks.shape}"
        )
    if maps.shape[0] == 0:
        raise ValueError("no images to score")
    if not np.all(np.isfinite(maps)):
        raise ValueError("maps contain NaN or infinite values")
    masks = masks.astype(bool)
    parts = [
        _score_chunk(maps[s : s + CHUNK], masks[s : s + CHUNK], min_cover)
        for s in range(0, maps.shape[0], CHUNK)
    ]
    return SegScores.concat(parts)
