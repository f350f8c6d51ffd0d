"""Order the patches of one case into a sequence: a short open path through their centres.

The KPIs patches of a case are tiles of one slide with no natural order. A video model wants
neighbouring frames to be neighbouring tissue, so the sequence is a short open path (a travelling
salesman path, not necessarily the shortest): greedy nearest neighbour starting from the top-left
centre (smallest y, then smallest x; for 1-D positions the smallest z), then 2-opt segment
reversals until no reversal shortens the path. Ties are broken by input order, so the result is
deterministic for a given input order (callers sort by file name first).
"""

from __future__ import annotations

import numpy as np

__all__ = ["path_length", "short_path_order"]


def path_length(points: np.ndarray, order: np.ndarray | None = None) -> float:
    """Length of the open path visiting ``points`` in ``order``.

    Args:
        points: ``[N, D]`` coordinates.
        order: permutation of ``range(N)``; identity when None.

    Returns:
        Sum of Euclidean distances between consecutive points.
    """
    pts = np.asarray(points, dtype=np.float64)
    if order is not None:
        pts = pts[np.asarray(order)]
    return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum()) if len(pts) > 1 else 0.0


def _start_index(pts: np.ndarray) -> int:
    # Top-left: smallest y then smallest x (2-D/3-D rows are (x, y[, z])); 1-D: smallest value.
    keys = (pts[:, 0],) if pts.shape[1] == 1 else (pts[:, 0], pts[:, 1])
    return int(np.lexsort(keys)[0])


def short_path_order(points: np.ndarray, max_sweeps: int = 50) -> np.ndarray:
    """Return an order of ``points`` that forms a short open path.

    Args:
        points: ``[N, D]`` patch centres (any unit).
        max_sweeps: cap on 2-opt improvement sweeps (each sweep is O(N^2) vectorised work).

    Returns:
        int64 permutation of ``range(N)``.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1:
        pts = pts[:, None]
    n = len(pts)
    if n <= 1:
        return np.arange(n, dtype=np.int64)
    dist = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)

    # Greedy nearest neighbour.
    order = np.empty(n, dtype=np.int64)
    visited = np.zeros(n, dtype=bool)
    current = _start_index(pts)
    for k in range(n):
        order[k] = current
        visited[current] = True
        if k < n - 1:
            row = np.where(visited, np.inf, dist[current])
            current = int(np.argmin(row))

    # 2-opt on an open path with a fixed start: reversing order[i+1..j] replaces edges (i, i+1) and
    # (j, j+1) by (i, j) and (i+1, j+1); when j is the last index only the first edge changes.
    for _ in range(max_sweeps):
        improved = False
        for i in range(n - 2):
            a, b = order[i], order[i + 1]
            js = np.arange(i + 2, n)
            c = order[js]
            d_next = np.append(order[js[:-1] + 1], -1)
            old = dist[a, b] + np.where(d_next >= 0, dist[c, np.maximum(d_next, 0)], 0.0)
            new = dist[a, c] + np.where(d_next >= 0, dist[b, np.maximum(d_next, 0)], 0.0)
            gain = old - new
            best = int(np.argmax(gain))
            if gain[best] > 1e-9 * (1.0 + old[best]):
                j = int(js[best])
                order[i + 1 : j + 1] = order[i + 1 : j + 1][::-1].copy()
                improved = True
        if not improved:
            break
    return order
