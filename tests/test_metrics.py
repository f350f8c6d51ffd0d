"""Per-slice Dice and object F1, checked against hand-built masks and numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

from pathseqsam.metrics import (
    ObjectF1Metric,
    match_objects,
    per_slice_output,
    slice_names_for_saver,
    summarise,
)


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2) <= r**2


def test_match_objects_counts():
    s = (64, 64)
    gt = _disc(s, 15, 15, 8) | _disc(s, 45, 45, 8)
    pred = _disc(s, 16, 15, 8)  # matches the first (IoU ~ 0.9)
    pred |= _disc(s, 45, 57, 6)  # overlaps the second weakly (IoU < 0.5)
    pred |= _disc(s, 10, 50, 3)  # a false positive
    assert match_objects(pred, gt) == (1, 2, 1)
    assert match_objects(np.zeros(s), gt) == (0, 0, 2)
    assert match_objects(pred, np.zeros(s)) == (0, 3, 0)
    # small components are dropped on both sides with min_size
    assert match_objects(pred, gt, min_size=50) == (1, 1, 1)


def test_object_f1_metric_pools_slices():
    s = (32, 32)
    a = _disc(s, 10, 10, 5)
    b = _disc(s, 22, 22, 5)
    metric = ObjectF1Metric()
    pred = torch.from_numpy(np.stack([a | b, a])[:, None].astype(np.float32))
    gt = torch.from_numpy(np.stack([a, a | b])[:, None].astype(np.float32))
    metric(pred, gt)
    # slice 0: tp 1, fp 1; slice 1: tp 1, fn 1 -> F1 = 2*2 / (2*2 + 1 + 1)
    assert metric.aggregate().item() == pytest.approx(4 / 6)
    metric.reset()
    metric(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    assert metric.aggregate().item() == 1.0  # nothing to find, nothing found


def test_per_slice_dice_matches_numpy():
    g = torch.Generator().manual_seed(0)
    items = [
        {
            "pred": (torch.rand(1, 3, 16, 16, generator=g) > 0.5).float(),
            "label": (torch.rand(1, 3, 16, 16, generator=g) > 0.5).float(),
        }
        for _ in range(2)
    ]
    items[0]["label"][0, 1] = 0
    items[0]["pred"][0, 1] = 0  # empty and empty: Dice 1 with ignore_empty=False
    preds, labels = per_slice_output(["pred", "label"])(items)
    assert len(preds) == 6 and preds[0].shape == (1, 16, 16)
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    got = metric(preds, labels)[:, 0].numpy()
    expected = []
    for it in items:
        p, t = it["pred"][0].numpy(), it["label"][0].numpy()
        for k in range(3):
            denom = p[k].sum() + t[k].sum()
            expected.append(1.0 if denom == 0 else 2 * (p[k] * t[k]).sum() / denom)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_slice_names_and_summary():
    batch = [
        {"case": "c1", "slice_names": ["a.jpg", "b.jpg"]},
        {"case": "c2", "image": torch.zeros(3, 1, 4, 4)},
    ]
    assert slice_names_for_saver(batch) == [
        {"filename_or_obj": "c1/a.jpg"},
        {"filename_or_obj": "c1/b.jpg"},
        {"filename_or_obj": "c2/slice0000"},
    ]
    s = summarise([0.5, 1.0, float("nan")])
    assert s == {"mean": 0.75, "std": 0.25, "median": 0.75, "count": 2}
    with pytest.raises(ValueError, match=r"expected \[C, N, H, W\]"):
        per_slice_output(["pred"])([{"pred": torch.zeros(4, 4)}])
