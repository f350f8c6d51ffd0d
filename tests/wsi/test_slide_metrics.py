"""Slide-level Dice and object F1 (one-to-one and KPIs greedy), band by band, against whole-mask references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pathseqsam.wsi.metrics import SlideScorer, object_scores


def _discs(shape, discs):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, bool)
    for cy, cx, r in discs:
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    return m


def _reference(pred, gt):
    """Whole-mask labelling (no bands, no union-find) and the full IoU matrix from pixel counts."""
    eight = np.ones((3, 3))
    pl, n = ndimage.label(pred, eight)
    gl, m = ndimage.label(gt, eight)
    inter = np.zeros((n + 1, m + 1))
    np.add.at(inter, (pl.ravel(), gl.ravel()), 1)
    pa = np.bincount(pl.ravel(), minlength=n + 1)[1:, None]
    ga = np.bincount(gl.ravel(), minlength=m + 1)[None, 1:]
    inter = inter[1:, 1:]
    return inter / (pa + ga - inter)


def _random_case(seed):
    rng = np.random.default_rng(seed)
    shape = (240, 180)
    gt_discs = [(rng.uniform(0, 240), rng.uniform(0, 180), rng.uniform(3, 14)) for _ in range(25)]
    gt = _discs(shape, gt_discs)
    # prediction: shifted and resized copies of most objects, some missed, some extra
    pred_discs = [
        (y + rng.normal(0, 3), x + rng.normal(0, 3), r * rng.uniform(0.6, 1.3)) for y, x, r in gt_discs[:20]
    ]
    pred_discs += [(rng.uniform(0, 240), rng.uniform(0, 180), rng.uniform(2, 8)) for _ in range(6)]
    return _discs(shape, pred_discs), gt


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("band", [1, 7, 64, 240])
def test_banded_scores_equal_the_whole_mask_reference(seed, band):
    pred, gt = _random_case(seed)
    scorer = SlideScorer()
    for y in range(0, pred.shape[0], band):
        scorer.update(pred[y : y + band], gt[y : y + band])
    got = scorer.result()
    iou = _reference(pred, gt)
    n, m = iou.shape
    assert (got["n_pred"], got["n_gt"]) == (n, m)
    assert got["dice"] == pytest.approx(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))
    # IoU > 0.5 partners are unique, so the one-to-one matches are the pairs above 0.5
    tp = int((iou >= 0.5).sum())
    assert got["tp"] == tp and got["fp"] == n - tp and got["fn"] == m - tp
    assert got["f1"] == pytest.approx(2 * tp / (n + m))
    # KPIs greedy: predictions with any partner >= 0.5; ground truths without one
    tp_k = int((iou >= 0.5).any(1).sum())
    fn_k = int((~(iou >= 0.5).any(0)).sum())
    p, r = tp_k / n, 1 - fn_k / m
    assert got["f1_kpis"] == pytest.approx(2 * p * r / (p + r))


def test_greedy_and_one_to_one_differ_when_one_prediction_covers_two():
    # prediction 0 overlaps ground truths 0 and 1 with IoU exactly 0.5 each (possible at the threshold)
    pred_areas, gt_areas = np.array([100.0]), np.array([50.0, 50.0])
    pairs, inter = np.array([[0, 0], [0, 1]]), np.array([50.0, 50.0])
    s = object_scores(pred_areas, gt_areas, pairs, inter)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 1)  # one-to-one: one match
    assert (s["tp_kpis"], s["fn_kpis"]) == (1, 0)  # greedy: both ground truths count as found
    assert s["f1"] == pytest.approx(2 / 3) and s["f1_kpis"] == pytest.approx(1.0)


def test_empty_masks():
    scorer = SlideScorer()
    scorer.update(np.zeros((5, 5), bool), np.zeros((5, 5), bool))
    r = scorer.result()
    assert r["dice"] == 1.0 and r["f1"] == 1.0 and r["f1_kpis"] == 1.0
    scorer = SlideScorer()
    scorer.update(np.zeros((5, 5), bool), np.eye(5, dtype=bool))
    r = scorer.result()
    assert r["dice"] == 0.0 and r["f1"] == 0.0 and r["fn"] == 1


def test_band_shapes_are_checked():
    scorer = SlideScorer()
    with pytest.raises(ValueError, match="bands must be 2-D and equal"):
        scorer.update(np.zeros((4, 5), bool), np.zeros((4, 6), bool))
    scorer.update(np.zeros((4, 5), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="band width 6 differs from the first band's 5"):
        scorer.update(np.zeros((4, 6), bool), np.zeros((4, 6), bool))
