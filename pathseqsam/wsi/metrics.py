"""Slide-level scores (KPIs Task 2): Dice and object F1 at IoU >= 0.5, computed band by band.

A slide's masks are never held whole: :class:`SlideScorer` takes the prediction and the ground
truth in horizontal bands (top to bottom) and keeps only running sums, the last row of each band
and per-object tallies. Objects are 8-connected components; a component that continues across a
band border is joined with union-find, so the result equals labelling the whole mask at once.

Object scores, from the pixel overlap of every (prediction, ground truth) object pair:

* **one-to-one** (the default F1): pairs with IoU >= 0.5, matched greedily by decreasing IoU, each
  object at most once; TP = matches, FP = predictions left, FN = ground truths left;
* **KPIs greedy** (the organisers' validation script): a prediction is a TP when ANY ground truth
  has IoU >= 0.5 with it; a ground truth is an FN when no prediction reaches 0.5 with it;
  precision = TP / predictions, recall = 1 - FN / ground truths, F1 = 2PR / (P + R).

Both empty: Dice 1 and F1 1 (nothing to find, nothing found); one empty: F1 0.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["SlideScorer", "object_scores"]

_EIGHT = np.ones((3, 3), dtype=bool)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = [0]  # id 0 = background

    def add(self, n: int) -> int:
        """Add ``n`` new ids; returns the first."""
        first = len(self.parent)
        self.parent.extend(range(first, first + n))
        return first

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:  # path compression
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


class _StreamingComponents:
    """8-connected components of a mask fed in row bands; global ids joined across band borders."""

    def __init__(self) -> None:
        self.uf = _UnionFind()
        self.areas: list[int] = [0]
        self.last_row: np.ndarray | None = None

    def add(self, band: np.ndarray) -> np.ndarray:
        labels, n = ndimage.label(band, structure=_EIGHT)
        labels = labels.astype(np.int64)
        if n:
            first = self.uf.add(n)
            labels[labels > 0] += first - 1
            self.areas.extend(np.bincount(labels[labels > 0] - (first - 1), minlength=n + 1)[1:].tolist())
        prev = self.last_row
        if prev is not None and n:
            row = labels[0]
            for shift in (-1, 0, 1):  # 8-connectivity: a pixel touches three above it
                a = prev[max(0, shift) : len(prev) + min(0, shift)]
                b = row[max(0, -shift) : len(row) + min(0, -shift)]
                both = (a > 0) & (b > 0)
                if both.any():
                    for x, y in np.unique(np.stack([a[both], b[both]], 1), axis=0):
                        self.uf.union(int(x), int(y))
        self.last_row = labels[-1].copy()
        return labels

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """``(root of every id, area per root id)`` (areas indexed by id; non-roots hold 0)."""
        roots = self.uf.roots()
        areas = np.bincount(roots, weights=np.asarray(self.areas, dtype=np.float64), minlength=len(roots))
        return roots, areas


def object_scores(
    pred_areas: np.ndarray,
    gt_areas: np.ndarray,
    pairs: np.ndarray,
    intersections: np.ndarray,
    iou: float = 0.5,
) -> dict[str, float]:
    """Object TP/FP/FN, precision, recall and F1, one-to-one and KPIs-greedy.

    Args:
        pred_areas: area of each predicted object ``[P]``.
        gt_areas: area of each ground-truth object ``[G]``.
        pairs: ``[K, 2]`` (prediction index, ground-truth index) pairs that overlap.
        intersections: ``[K]`` overlapping pixels of each pair.
        iou: IoU threshold.

    Returns:
        ``tp, fp, fn, precision, recall, f1`` (one-to-one) and ``*_kpis`` (greedy), object counts.
    """
    n_pred, n_gt = len(pred_areas), len(gt_areas)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    inter = np.asarray(intersections, dtype=np.float64)
    union = pred_areas[pairs[:, 0]] + gt_areas[pairs[:, 1]] - inter if len(pairs) else inter
    ious = inter / np.maximum(union, 1e-12)
    hit = ious >= iou
    # one-to-one: greedy by decreasing IoU
    used_p, used_g = set(), set()
    for k in np.argsort(-ious[hit], kind="stable"):
        p, g = (int(v) for v in pairs[hit][k])
        if p not in used_p and g not in used_g:
            used_p.add(p)
            used_g.add(g)
    tp = len(used_p)
    fp, fn = n_pred - tp, n_gt - tp
    # KPIs greedy
    tp_k = len(np.unique(pairs[hit, 0])) if hit.any() else 0
    fn_k = n_gt - (len(np.unique(pairs[hit, 1])) if hit.any() else 0)

    def prf(t: float, npred: int, ngt: int, recall: float | None = None) -> tuple[float, float, float]:
        if npred == 0 and ngt == 0:
            return 1.0, 1.0, 1.0
        precision = t / npred if npred else 0.0
        rec = recall if recall is not None else (t / ngt if ngt else 0.0)
        f1 = 2 * precision * rec / (precision + rec) if precision + rec > 0 else 0.0
        return precision, rec, f1

    p1, r1, f1 = prf(tp, n_pred, n_gt)
    pk, rk, fk = prf(tp_k, n_pred, n_gt, recall=(1.0 - fn_k / n_gt) if n_gt else 0.0)
    return {
        "n_pred": n_pred,
        "n_gt": n_gt,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": p1,
        "recall": r1,
        "f1": f1,
        "tp_kpis": tp_k,
        "fp_kpis": n_pred - tp_k,
        "fn_kpis": fn_k,
        "precision_kpis": pk,
        "recall_kpis": rk,
        "f1_kpis": fk,
    }


class SlideScorer:
    """Dice and object F1 of one slide, fed as row bands (top to bottom, full width).

    Example::

        scorer = SlideScorer()
        for y in range(0, height, 512):
            scorer.update(pred[y : y + 512] > 0, gt[y : y + 512] > 0)
        scores = scorer.result()
    """

    def __init__(self, iou: float = 0.5) -> None:
        self.iou = iou
        self.intersection = 0
        self.pred_pixels = 0
        self.gt_pixels = 0
        self._pred = _StreamingComponents()
        self._gt = _StreamingComponents()
        self._pairs: dict[tuple[int, int], int] = {}
        self._width: int | None = None

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add the next band of the binary prediction and ground truth (same shape)."""
        pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
        if pred.shape != gt.shape or pred.ndim != 2:
            raise ValueError(f"bands must be 2-D and equal: prediction {pred.shape}, ground truth {gt.shape}")
        if self._width is None:
            self._width = pred.shape[1]
        elif pred.shape[1] != self._width:
            raise ValueError(f"band width {pred.shape[1]} differs from the first band's {self._width}")
        both = pred & gt
        self.intersection += int(both.sum())
        self.pred_pixels += int(pred.sum())
        self.gt_pixels += int(gt.sum())
        pl, gl = self._pred.add(pred), self._gt.add(gt)
        if both.any():
            keys, counts = np.unique(np.stack([pl[both], gl[both]], 1), axis=0, return_counts=True)
            for (p, g), c in zip(keys.tolist(), counts.tolist()):
                self._pairs[(p, g)] = self._pairs.get((p, g), 0) + c

    def result(self) -> dict[str, float]:
        """Dice (1 when both masks are empty) and :func:`object_scores`."""
        total = self.pred_pixels + self.gt_pixels
        dice = 1.0 if total == 0 else 2.0 * self.intersection / total
        p_roots, p_areas = self._pred.finish()
        g_roots, g_areas = self._gt.finish()
        p_ids = np.unique(p_roots[1:]) if len(p_roots) > 1 else np.zeros(0, np.int64)
        g_ids = np.unique(g_roots[1:]) if len(g_roots) > 1 else np.zeros(0, np.int64)
        p_index = {int(r): i for i, r in enumerate(p_ids)}
        g_index = {int(r): i for i, r in enumerate(g_ids)}
        merged: dict[tuple[int, int], int] = {}
        for (p, g), c in self._pairs.items():
            key = (p_index[int(p_roots[p])], g_index[int(g_roots[g])])
            merged[key] = merged.get(key, 0) + c
        pairs = np.array(list(merged), dtype=np.int64).reshape(-1, 2)
        inter = np.array(list(merged.values()), dtype=np.float64)
        scores = object_scores(p_areas[p_ids], g_areas[g_ids], pairs, inter, self.iou)
        return {
            "dice": dice,
            "pred_pixels": self.pred_pixels,
            "gt_pixels": self.gt_pixels,
            "intersection": self.intersection,
            **scores,
        }
