"""The crossed seed-and-case bootstrap against an independent computation on a hand-made table."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pathseqsam.compare.bootstrap import case_scores, crossed_bootstrap, crossed_mean

# 2 arms x 2 seeds x 3 cases, by hand
A = [[0.80, 0.60, 0.90], [0.70, 0.50, 1.00]]
B = [[0.70, 0.60, 0.60], [0.75, 0.40, 0.80]]


def _rows():
    """Per-slice rows whose per-case degraded means are A and B (clean slices must not count)."""
    rows = []
    for arm, table in (("x", A), ("y", B)):
        for s, seed_row in enumerate(table):
            for c, value in enumerate(seed_row):
                # two degraded slices averaging to `value`, one clean slice that must be ignored
                for dice, degraded in ((value + 0.05, 1), (value - 0.05, 1), (0.0, 0)):
                    rows.append(
                        {"arm": arm, "seed": 10 + s, "case": f"case{c}", "dice": dice, "degraded": degraded}
                    )
    return rows


def test_case_scores_average_slices_within_a_case():
    scores, seeds, cases = case_scores(_rows(), ["x", "y"], where=lambda r: r["degraded"] == 1)
    assert seeds == [10, 11] and cases == ["case0", "case1", "case2"]
    np.testing.assert_allclose(scores, np.array([A, B]))
    # the estimate: mean over cases, then over seeds, by hand
    assert crossed_mean(scores)[0] == pytest.approx(((0.8 + 0.6 + 0.9) / 3 + (0.7 + 0.5 + 1.0) / 3) / 2)


def _exact_distribution(table: np.ndarray) -> np.ndarray:
    """Every equally likely resample of 2 seeds and 3 cases (4 x 27), the difference x - y, in loops."""
    n_seeds, n_cases = table.shape[1:]
    values = []
    for seeds in itertools.product(range(n_seeds), repeat=n_seeds):
        for cases in itertools.product(range(n_cases), repeat=n_cases):
            per_arm = []
            for arm in range(2):
                seed_means = [sum(table[arm][s][c] for c in cases) / n_cases for s in seeds]
                per_arm.append(sum(seed_means) / n_seeds)
            values.append(per_arm[0] - per_arm[1])
    return np.array(values)


def test_crossed_bootstrap_matches_the_exact_resampling_distribution():
    table = np.array([A, B])
    est = crossed_bootstrap(table, contrast=[1, -1])
    exact = _exact_distribution(table)
    assert est.value == pytest.approx(np.mean(A) - np.mean(B))
    assert est.resamples == 10_000 and (est.seeds, est.cases) == (2, 3)
    # the percentile bounds sit where the exact distribution's do (up to its discreteness)
    assert np.quantile(exact, 0.015) <= est.low <= np.quantile(exact, 0.035)
    assert np.quantile(exact, 0.965) <= est.high <= np.quantile(exact, 0.985)
    assert crossed_bootstrap(table, contrast=[1, -1]) == est  # fixed rng seed: same interval


def test_same_case_draw_for_every_arm():
    # y = x - 0.1 on every (seed, case): paired resampling gives exactly 0.1 in every resample
    x = np.array(A)
    est = crossed_bootstrap(np.array([x, x - 0.1]), contrast=[1, -1], resamples=500)
    assert est.low == pytest.approx(0.1) and est.high == pytest.approx(0.1)


def test_a_case_without_selected_slices_is_left_out():
    x = np.array(A)
    x[:, 1] = np.nan  # case 1 has no degraded slice (in every seed: a property of the test case)
    est = crossed_bootstrap(x, resamples=200)
    assert est.value == pytest.approx(np.mean([0.8, 0.9, 0.7, 1.0]))
    assert 0.7 <= est.low <= est.high <= 1.0
    with pytest.raises(ValueError, match="contrast needs one weight per arm"):
        crossed_bootstrap(np.array([A, B]), contrast=[1, -1, 0])
