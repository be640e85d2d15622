"""Rendering of maps for the dashboard: the one diverging colour scale, overlays, the legend.

The scale is symmetric about 0: blue (most negative) - white (0) - red (most positive), so red
always means high similarity (the paper's demo inverted it).
"""

from __future__ import annotations

import numpy as np

from engine.core.analysis import symmetric_scale, upsample

NEG_RGB = np.array([33, 102, 172], dtype=np.float32)
POS_RGB = np.array([178, 24, 43], dtype=np.float32)
MID_RGB = np.array([247, 247, 247], dtype=np.float32)


def diverging_rgb(values: np.ndarray, vmax: float) -> np.ndarray:
    """Colours of ``values [...]`` on the scale [-vmax, vmax]: blue - white - red ->
    ``[..., 3]`` float32 in 0..255. Red = high similarity (never inverted)."""
    t = np.clip(np.asarray(values, dtype=np.float32) / vmax, -1.0, 1.0)[..., None]
    pos = MID_RGB + (POS_RGB - MID_RGB) * np.clip(t, 0, 1)
    neg = MID_RGB + (NEG_RGB - MID_RGB) * np.clip(-t, 0, 1)
    return np.where(t >= 0, pos, neg)


def high_cells(grid_map: np.ndarray, fraction: float = 0.5, top: float = 0.1) -> np.ndarray:
    """Cells marked as high similarity -> bool ``[grid, grid]``: positive, at least ``fraction``
    of the map's maximum, and among the top ``top`` share of cells (at least one cell), so a
    map that is positive everywhere still marks only its peaks. All False when nothing is
    positive."""
    g = np.asarray(grid_map, dtype=np.float32)
    peak = float(g.max())
    if peak <= 0:
        return np.zeros(g.shape, dtype=bool)
    n_top = max(1, int(round(top * g.size)))
    kth = np.sort(g, axis=None)[-n_top]  # the n_top-th largest value
    return (g >= fraction * peak) & (g >= kth) & (g > 0)


def heat_overlay(
    image: np.ndarray,
    grid_map: np.ndarray,
    vmax: float | None = None,
    alpha: float = 0.6,
    mark_fraction: float = 0.5,
) -> np.ndarray:
    """The map over the (preprocessed-crop) image: ``image [H, W, 3] uint8`` (square),
    ``grid_map [grid, grid]`` -> ``[H, W, 3] uint8``.

    Colour: ``diverging_rgb`` on [-vmax, vmax] (default: symmetric max |value|), blended with
    opacity ``alpha * |value| / vmax`` so neutral regions keep the photo. Cells at or above
    ``mark_fraction`` of the positive maximum get a black-and-yellow outline.
    """
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[:2]
    if h != w:
        raise ValueError("heat_overlay expects the square preprocessed crop")
    vmax = symmetric_scale(grid_map) if vmax is None else float(vmax)
    up = upsample(grid_map, h)  # [H, W]
    colour = diverging_rgb(up, vmax)  # [H, W, 3]
    a = alpha * np.clip(np.abs(up) / vmax, 0, 1)[..., None]
    out = img * (1 - a) + colour * a
    mark = high_cells(grid_map, mark_fraction)
    n = mark.shape[0]
    edges = np.linspace(0, h, n + 1).round().astype(int)
    t = max(1, h // 128)  # outline thickness in pixels
    for r, c in zip(*np.nonzero(mark), strict=True):
        y0, y1, x0, x1 = edges[r], edges[r + 1], edges[c], edges[c + 1]
        for colour_rgb, inset in (((0, 0, 0), 0), ((255, 221, 0), t)):
            ya, yb, xa, xb = y0 + inset, y1 - inset, x0 + inset, x1 - inset
            if yb - ya <= 2 * t or xb - xa <= 2 * t:
                continue
            out[ya : ya + t, xa:xb] = colour_rgb
            out[yb - t : yb, xa:xb] = colour_rgb
            out[ya:yb, xa : xa + t] = colour_rgb
            out[ya:yb, xb - t : xb] = colour_rgb
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def colour_bar(vmax: float, width: int = 256, height: int = 16) -> np.ndarray:
    """The legend of ``heat_overlay``: a horizontal bar from -vmax (left) to +vmax (right)
    -> ``[height, width, 3] uint8``."""
    values = np.linspace(-vmax, vmax, width, dtype=np.float32)
    row = diverging_rgb(values, vmax)  # [width, 3]
    return np.broadcast_to(row[None], (height, width, 3)).round().astype(np.uint8)


def hex_colour(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(round(c)):02x}" for c in rgb)


HEAT_RANGE = [hex_colour(NEG_RGB), hex_colour(MID_RGB), hex_colour(POS_RGB)]  # for Altair legends
