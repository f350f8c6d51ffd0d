"""Per-slice (per-patch) metrics for sequences: Dice as in KPIs/Table 1, and object-level F1.

The network predicts a whole sequence ``[1, N, H, W]`` per item, but KPIs (and the paper's Table 1)
score every patch separately and report mean +- SD over patches. :func:`per_slice_output` splits
each item into its slices so MONAI's ``MeanDice`` handler (``DiceMetric``: sigmoid, threshold 0.5 in
the postprocessing) scores one row per patch; :func:`slice_names_for_saver` gives ``MetricsSaver``
one name per patch for those rows.

Object F1: connected components of prediction and ground truth in each slice, matched one-to-one
(greedy by IoU) when IoU >= 0.5; F1 = 2 TP / (2 TP + FP + FN) over all slices pooled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from scipy import ndimage
from torch import Tensor

__all__ = [
    "ObjectF1Metric",
    "match_objects",
    "per_slice_output",
    "pooled_f1",
    "slice_names_for_saver",
    "summarise",
]


def _split_slices(x: Any) -> list[Tensor]:
    if isinstance(x, (list, tuple)):
        return [s for item in x for s in _split_slices(item)]
    x = torch.as_tensor(x)
    if x.ndim == 5:  # a batched [B, C, N, H, W]
        return [s for item in x for s in _split_slices(item)]
    if x.ndim == 4:  # one sequence [C, N, H, W] -> N slices [C, H, W]
        return list(x.unbind(1))
    if x.ndim == 3:  # already a slice
        return [x]
    raise ValueError(f"expected [C, N, H, W] sequences or [C, H, W] slices, got shape {tuple(x.shape)}")


def per_slice_output(keys: Sequence[str] = ("pred", "label")) -> Callable[[Any], tuple[list[Tensor], ...]]:
    """``output_transform`` for Ignite metric handlers: one ``[C, H, W]`` item per slice.

    Args:
        keys: engine output keys (decollated items ``[C, N, H, W]``).

    Returns:
        A callable ``output -> (slices_of_keys[0], slices_of_keys[1], ...)``.
    """
    from monai.handlers import from_engine

    get = from_engine(list(keys))

    def transform(output: Any) -> tuple[list[Tensor], ...]:
        return tuple(_split_slices(v) for v in get(output))

    return transform


def _names(item: dict[str, Any]) -> list[str]:
    case = item.get("case", "sequence")
    names = item.get("slice_names")
    if names is None:
        n = torch.as_tensor(item["image"]).shape[1]
        names = [f"slice{i:04d}" for i in range(n)]
    return [f"{case}/{name}" for name in names]


def slice_names_for_saver(batch: Any) -> list[dict[str, str]]:
    """``MetricsSaver(batch_transform=...)``: one ``{"filename_or_obj": "case/slice"}`` per slice."""
    items = batch if isinstance(batch, (list, tuple)) else [batch]
    return [{"filename_or_obj": name} for item in items for name in _names(item)]


def match_objects(
    pred: np.ndarray, gt: np.ndarray, iou_threshold: float = 0.5, min_size: int = 0
) -> tuple[int, int, int]:
    """TP, FP, FN of connected components matched one-to-one at IoU >= ``iou_threshold``.

    Args:
        pred: binary ``[H, W]`` prediction.
        gt: binary ``[H, W]`` ground truth.
        iou_threshold: match threshold.
        min_size: drop components smaller than this many pixels (both sides).

    Returns:
        ``(tp, fp, fn)``.
    """
    lp, npred = ndimage.label(pred > 0)
    lg, ngt = ndimage.label(gt > 0)
    if min_size:
        for lab, n in ((lp, npred), (lg, ngt)):
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            lab[np.isin(lab, np.nonzero(sizes < min_size)[0]) & (lab > 0)] = 0
        lp, npred = ndimage.label(lp > 0)
        lg, ngt = ndimage.label(lg > 0)
    if npred == 0 or ngt == 0:
        return 0, npred, ngt
    inter = np.bincount((lg * (npred + 1) + lp).ravel(), minlength=(ngt + 1) * (npred + 1)).reshape(
        ngt + 1, npred + 1
    )
    area_g, area_p = inter.sum(1), inter.sum(0)
    inter = inter[1:, 1:]
    iou = inter / (area_g[1:, None] + area_p[None, 1:] - inter)
    tp, used_g, used_p = 0, set(), set()
    for g, p in zip(*np.unravel_index(np.argsort(-iou, axis=None), iou.shape)):
        if iou[g, p] < iou_threshold:
            break
        if g in used_g or p in used_p:
            continue
        used_g.add(g)
        used_p.add(p)
        tp += 1
    return tp, npred - tp, ngt - tp


class ObjectF1Metric(CumulativeIterationMetric):
    """Object-level F1 at IoU >= 0.5, pooled over slices (per-slice TP/FP/FN are kept as details).

    Inputs are binarised predictions and labels, ``[B, 1, H, W]`` (or lists of ``[1, H, W]``).

    Args:
        iou_threshold: match threshold (KPIs: 0.5).
        min_size: ignore components smaller than this (pixels).
    """

    def __init__(self, iou_threshold: float = 0.5, min_size: int = 0) -> None:
        super().__init__()
        self.iou_threshold = iou_threshold
        self.min_size = min_size

    def _compute_tensor(self, y_pred: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        pred = y_pred.detach().cpu().numpy()
        gt = y.detach().cpu().numpy()
        rows = [match_objects(p[0], g[0], self.iou_threshold, self.min_size) for p, g in zip(pred, gt)]
        return torch.tensor(rows, dtype=torch.float32)  # [B, 3]: tp, fp, fn

    def aggregate(self, reduction: str | None = None) -> Tensor:  # type: ignore[override]
        counts = self.get_buffer()
        if not isinstance(counts, Tensor) or counts.numel() == 0:
            return torch.tensor(float("nan"))
        tp, fp, fn = counts.reshape(-1, 3).sum(0)
        return torch.tensor(pooled_f1(float(tp), float(fp), float(fn)))


def pooled_f1(tp: float, fp: float, fn: float) -> float:
    """Object F1 from counts pooled over slices: ``2 TP / (2 TP + FP + FN)``; 1 when there is nothing at all."""
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom > 0 else 1.0


def summarise(values: Tensor | np.ndarray | Sequence[float]) -> dict[str, float]:
    """Mean, SD (population, as numpy), median and count of the finite values (NaN = ignored)."""
    v = np.asarray(torch.as_tensor(values).float().flatten().cpu())
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "count": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "median": float(np.median(v)),
        "count": int(v.size),
    }
