"""The mechanisms study's statistics: per-case scores and a crossed seed-and-case bootstrap.

The study's design is crossed: every trained seed is evaluated on the same test cases. A score is
first reduced to one number per (arm, seed, case) (the mean over the case's selected slices: its
degraded slices for the primary endpoint), then averaged over cases, then over seeds. Slices of one
case are never resampled as if independent: a case is one unit.

The interval resamples seeds and cases independently (with replacement), the same case draw for
every arm and every seed, so a difference between two arms is computed on exactly the same
resampled units: :func:`crossed_bootstrap`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "Estimate",
    "case_scores",
    "crossed_bootstrap",
    "crossed_mean",
]

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20_240_615  # fixed: the interval is a function of the table alone


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its crossed-bootstrap percentile interval.

    Attributes:
        value: the estimate on the data as they are.
        low, high: percentile interval bounds (``level`` coverage).
        level: nominal coverage (0.95).
        seeds, cases: how many seeds and cases entered.
        resamples: bootstrap resamples.
    """

    value: float
    low: float
    high: float
    level: float
    seeds: int
    cases: int
    resamples: int


def case_scores(
    rows: Iterable[dict], arms: Sequence[str], value: str = "dice", where=None
) -> tuple[np.ndarray, list[int], list[str]]:
    """Per (arm, seed, case) mean of ``value`` over the rows that ``where`` keeps.

    Args:
        rows: per-slice records with ``arm``, ``seed``, ``case`` and ``value`` (one test set's rows).
        arms: the arms, in the order of the output's first axis.
        value: the column averaged.
        where: predicate on a row (default: every row); a case with no kept row is ``nan``.

    Returns:
        ``(scores [arms, seeds, cases], seeds, cases)``; seeds and cases sorted. Missing
        (arm, seed) pairs are all ``nan``.
    """
    sums: dict[tuple[str, int, str], list[float]] = {}
    seeds: set[int] = set()
    cases: set[str] = set()
    for row in rows:
        if row["arm"] not in arms:
            continue
        seeds.add(int(row["seed"]))
        cases.add(str(row["case"]))
        if where is not None and not where(row):
            continue
        acc = sums.setdefault((row["arm"], int(row["seed"]), str(row["case"])), [0.0, 0])
        acc[0] += float(row[value])
        acc[1] += 1
    seed_list, case_list = sorted(seeds), sorted(cases)
    out = np.full((len(arms), len(seed_list), len(case_list)), np.nan)
    for (arm, seed, case), (total, count) in sums.items():
        out[arms.index(arm), seed_list.index(seed), case_list.index(case)] = total / count
    return out, seed_list, case_list


def crossed_mean(scores: np.ndarray) -> np.ndarray:
    """Mean over cases (those with a score), then over seeds: ``[..., seeds, cases] -> [...]``."""
    with warnings.catch_warnings():  # a resample may hold only cases without a score: nan, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.nanmean(scores, axis=-1), axis=-1)


def crossed_bootstrap(
    scores: np.ndarray,
    contrast: Sequence[float] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> Estimate:
    """Percentile interval of ``contrast . crossed_mean(scores)``, seeds and cases resampled independently.

    Each resample draws ``S`` seeds and ``C`` cases with replacement; every arm (first axis) is
    evaluated on the same seeds and cases, so paired differences stay paired. A case that has no
    score (no selected slice) is left out of the case mean, as it is from the estimate.

    Args:
        scores: ``[arms, seeds, cases]`` (:func:`case_scores`) or ``[seeds, cases]`` for one arm.
        contrast: weights over arms (``[1, -1]``: first minus second); None: the single arm.
        resamples: bootstrap resamples.
        seed: rng seed of the resampling.
        level: coverage of the interval.

    Returns:
        The :class:`Estimate`.

    Raises:
        ValueError: shapes or contrast that do not fit, or no scored case.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 2:
        scores = scores[None]
    if scores.ndim != 3:
        raise ValueError(f"scores must be [arms, seeds, cases] or [seeds, cases], got shape {scores.shape}")
    weights = np.ones(1) if contrast is None else np.asarray(contrast, dtype=np.float64)
    if weights.shape != (scores.shape[0],):
        raise ValueError(f"contrast needs one weight per arm ({scores.shape[0]}), got {list(weights)}")
    _, n_seeds, n_cases = scores.shape
    if n_seeds == 0 or n_cases == 0 or np.isnan(scores).all():
        raise ValueError("no scored (arm, seed, case): nothing to estimate")
    value = float(weights @ crossed_mean(scores))
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for b in range(resamples):
        s = rng.integers(0, n_seeds, n_seeds)
        c = rng.integers(0, n_cases, n_cases)
        stats[b] = weights @ crossed_mean(scores[:, s][:, :, c])
    alpha = (1.0 - level) / 2.0
    low, high = np.nanquantile(stats, [alpha, 1.0 - alpha])
    return Estimate(value, float(low), float(high), level, n_seeds, n_cases, resamples)
