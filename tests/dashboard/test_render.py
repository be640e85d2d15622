"""dashboard/render.py: the one diverging colour scale, overlays, legend."""

from __future__ import annotations

import numpy as np
import pytest

from dashboard import render

pytestmark = pytest.mark.unit


def test_diverging_scale_red_is_high_blue_is_low():
    c = render.diverging_rgb(np.array([-1.0, 0.0, 1.0, 5.0]), vmax=1.0)
    np.testing.assert_allclose(c[0], render.NEG_RGB)
    np.testing.assert_allclose(c[1], render.MID_RGB)
    np.testing.assert_allclose(c[2], render.POS_RGB)
    np.testing.assert_allclose(c[3], render.POS_RGB)  # clipped
    bar = render.colour_bar(2.0, width=11, height=3)
    assert bar.shape == (3, 11, 3) and bar.dtype == np.uint8
    assert bar[0, 0, 2] > bar[0, 0, 0]  # left end blue
    assert bar[0, -1, 0] > bar[0, -1, 2]  # right end red


def test_high_cells_and_overlay_marks_the_hot_cell():
    g = np.zeros((4, 4), dtype=np.float32)
    g[1, 2] = 3.0
    g[3, 0] = -3.0
    mark = render.high_cells(g)
    assert mark.sum() == 1 and mark[1, 2]
    assert not render.high_cells(-np.abs(g)).any()
    # positive everywhere: only the top 10% of cells (here 2 of 16) are marked
    ramp = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    assert render.high_cells(ramp).sum() == 2 and render.high_cells(ramp)[3, 3]
    img = np.full((128, 128, 3), 128, dtype=np.uint8)
    out = render.heat_overlay(img, g)
    assert out.shape == img.shape and out.dtype == np.uint8
    # centre of the hot cell: red dominates; centre of the negative cell: blue dominates
    hot = out[48, 80].astype(int)
    cold = out[112, 16].astype(int)
    assert hot[0] > hot[2] + 40
    assert cold[2] > cold[0] + 40
    # far from both, the photo is untouched
    np.testing.assert_array_equal(out[16, 16], img[16, 16])
    # the outline is drawn on the border of the hot cell (rows 32..64, cols 64..96)
    assert tuple(out[32, 80]) == (0, 0, 0)
    with pytest.raises(ValueError):
        render.heat_overlay(np.zeros((10, 20, 3), np.uint8), g)


def test_altair_range_is_the_same_scale():
    assert render.HEAT_RANGE == [
        render.hex_colour(c) for c in (render.NEG_RGB, render.MID_RGB, render.POS_RGB)
    ]
    assert render.HEAT_RANGE[0] == "#2166ac" and render.HEAT_RANGE[2] == "#b2182b"
