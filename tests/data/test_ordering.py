"""The patch order: a short open path through the centres, from the top-left."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pathseqsam.data.ordering import path_length, short_path_order


def _optimal_open_path(points: np.ndarray, start: int) -> float:
    rest = [i for i in range(len(points)) if i != start]
    return min(path_length(points, [start, *perm]) for perm in itertools.permutations(rest))


@pytest.mark.parametrize("seed", range(5))
def test_near_optimal_on_small_random_sets(seed):
    pts = np.random.default_rng(seed).uniform(0, 100, size=(7, 2))
    order = short_path_order(pts)
    assert sorted(order.tolist()) == list(range(7))
    start = int(np.lexsort((pts[:, 0], pts[:, 1]))[0])  # smallest y, then smallest x
    assert order[0] == start
    assert path_length(pts, order) <= 1.15 * _optimal_open_path(pts, start) + 1e-9


def test_grid_of_patches_is_walked_through_neighbours():
    # 4 x 5 grid of 2048 px patches, given in a shuffled order.
    grid = np.array([(x, y) for y in range(4) for x in range(5)], dtype=float) * 2048
    pts = grid[np.random.default_rng(0).permutation(len(grid))]
    order = short_path_order(pts)
    steps = np.linalg.norm(np.diff(pts[order], axis=0), axis=1)
    assert np.all(steps <= 2048 * np.sqrt(2) + 1e-6)  # never a jump across the slide
    assert path_length(pts, order) <= 1.1 * 19 * 2048  # 19 unit steps is optimal


def test_one_dimensional_positions_are_sorted():
    z = np.array([[12.0], [0.0], [4.0], [30.0], [8.0]])
    assert short_path_order(z).tolist() == [1, 2, 4, 0, 3]
    assert short_path_order(np.zeros((1, 2))).tolist() == [0]
