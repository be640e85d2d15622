"""Segmentation metrics on planted maps with hand-computed answers (engine.core.segmetrics)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.segmetrics import (
    SegScores,
    average_precision,
    pointing_game,
    score_maps,
    upsample_bilinear,
)

pytestmark = pytest.mark.unit


def blob_mask(n=8):
    m = np.zeros((n, n), bool)
    m[2:5, 1:6] = True  # 15 of 64 pixels
    return m


def test_perfect_map_scores_one():
    m = blob_mask()
    s = score_maps(m[None].astype(float), m[None])
    mean = s.mean()
    for k in ("pixel_acc", "miou", "map", "ap_fg", "pointing", "iou_fg", "iou_bg"):
        assert mean[k] == pytest.approx(1.0), k
    assert s.threshold[0] == pytest.approx(15 / 64)


def test_inverted_map():
    m = blob_mask()
    s = score_maps((~m)[None].astype(float), m[None])
    assert s.pixel_acc[0] == 0.0 and s.iou_fg[0] == 0.0 and s.iou_bg[0] == 0.0
    assert s.pointing[0] == np.False_
    # foreground all scored 0 below every background pixel: AP = precision at full recall
    assert s.ap_fg[0] == pytest.approx(15 / 64)
    # two channels: every top-scored entry is a negative, every bottom one a positive
    assert s.ap[0] == pytest.approx(0.5)


def test_partial_overlap_by_hand():
    # 2x2 grid scored on a 2x2 mask: no interpolation. Scaled map [[1, 3/4], [1/4, 0]] (exact
    # in binary, so 1 - s ties exactly with s), mean 1/2 -> prediction [[1, 1], [0, 0]];
    # mask [[1, 0], [1, 0]].
    maps = np.array([[[4.0, 3.0], [1.0, 0.0]]])
    masks = np.array([[[True, False], [True, False]]])
    s = score_maps(maps, masks)
    assert s.pixel_acc[0] == pytest.approx(0.5)
    assert s.iou_fg[0] == pytest.approx(1 / 3)  # inter 1, union 3
    assert s.iou_bg[0] == pytest.approx(1 / 3)
    assert s.miou[0] == pytest.approx(1 / 3)
    # foreground ranking pos(1), neg(3/4), pos(1/4), neg(0): AP = 1/2*1 + 1/2*2/3
    assert s.ap_fg[0] == pytest.approx(5 / 6)
    # pooled channels by score: {1: 2 pos}, {3/4: 2 neg}, {1/4: 2 pos}, {0: 2 neg}
    assert s.ap[0] == pytest.approx(0.5 * 1 + 0.5 * (4 / 6))
    assert s.pointing[0]  # hottest patch (0, 0) is on the object
    assert s.threshold[0] == pytest.approx(0.5)


def test_negative_values_are_clipped_before_scaling():
    # clipping makes the background 0: the mean drops and only the positive patch is foreground
    maps = np.array([[[2.0, -5.0], [-5.0, -5.0]]])
    masks = np.array([[[True, False], [False, False]]])
    s = score_maps(maps, masks)
    assert s.pixel_acc[0] == 1.0 and s.miou[0] == 1.0


def test_pooled_miou_differs_from_the_mean_of_images():
    big = np.zeros((4, 4), bool)
    big[:, :2] = True
    small = np.zeros((4, 4), bool)
    small[0, 0] = True
    maps = np.stack([big.astype(float), np.zeros((4, 4))])  # second map: constant -> all bg
    s = score_maps(maps, np.stack([big, small]))
    mean = s.mean()
    # image 2: fg IoU 0/1 = 0, bg IoU 15/16; pooled fg: 8/9, bg: (8+15)/(8+16)
    assert s.iou_fg[1] == 0.0 and s.iou_bg[1] == pytest.approx(15 / 16)
    assert mean["iou_fg"] == pytest.approx(8 / 9)
    assert mean["iou_bg"] == pytest.approx(23 / 24)
    assert mean["miou"] == pytest.approx((8 / 9 + 23 / 24) / 2)
    assert mean["miou_image_mean"] == pytest.approx((1 + (15 / 16) / 2) / 2)
    assert mean["pixel_acc"] == pytest.approx((16 + 15) / 32)


def test_upsampling_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3, 7, 7))
    for size in [(224, 224), (50, 33), (7, 7), (5, 9)]:
        want = torch.nn.functional.interpolate(
            torch.from_numpy(maps)[:, None], size=size, mode="bilinear", align_corners=False
        )[:, 0].numpy()
        assert np.allclose(upsample_bilinear(maps, size), want, atol=1e-10)


def test_upsampled_blocks_keep_a_blocky_mask():
    # a 2x2 map of a left half upsampled to 8x8: the threshold at the mean recovers the half
    maps = np.array([[[1.0, 0.0], [1.0, 0.0]]])
    mask = np.zeros((1, 8, 8), bool)
    mask[0, :, :4] = True
    s = score_maps(maps, mask)
    assert s.pixel_acc[0] == 1.0 and s.ap_fg[0] == 1.0


def test_pointing_game_cells_and_cover():
    maps = np.zeros((2, 4, 4))
    maps[0, 1, 2] = 1.0  # patch rows 2-3, cols 4-5 of an 8x8 mask
    maps[1, 3, 3] = 1.0
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 3, 5] = True  # one of the patch's 4 pixels
    masks[1, 0, 0] = True
    assert list(pointing_game(maps, masks)) == [True, False]
    assert list(pointing_game(maps, masks, min_cover=0.5)) == [False, False]


@settings(max_examples=50, deadline=None)
@given(
    scores=st.lists(st.integers(0, 5), min_size=1, max_size=30),
    seed=st.integers(0, 1000),
)
def test_average_precision_matches_the_definition(scores, seed):
    rng = np.random.default_rng(seed)
    s = np.array(scores, float)
    pos = rng.random(len(s)) < 0.5
    if not pos.any():
        assert np.isnan(average_precision(s, pos))
        return
    # definition by thresholds: for each distinct score t (descending), precision and recall of
    # "score >= t"
    ap, prev_r = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        sel = s >= t
        r = (sel & pos).sum() / pos.sum()
        ap += (r - prev_r) * (sel & pos).sum() / sel.sum()
        prev_r = r
    assert average_precision(s, pos) == pytest.approx(ap)


def test_batches_concat_and_errors():
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((70, 4, 4))  # more than one CHUNK
    masks = rng.random((70, 16, 16)) < 0.3
    whole = score_maps(maps, masks)
    parts = SegScores.concat([score_maps(maps[:30], masks[:30]), score_maps(maps[30:], masks[30:])])
    assert whole.mean() == pytest.approx(parts.mean(), nan_ok=True)
    with pytest.raises(ValueError):
        score_maps(maps[:0], masks[:0])
    with pytest.raises(ValueError):
        score_maps(maps[:2], masks[:3])
    with pytest.raises(ValueError):
        score_maps(np.full((1, 2, 2), np.nan), masks[:1])
