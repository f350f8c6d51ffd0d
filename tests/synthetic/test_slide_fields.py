"""Slide-wide factor fields: the same distribution at every correlation length, only the reach moves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtri

from pathseqsam.synthetic.slide_fields import DAMAGE_FRACTION, correlated_uniform, make_slide_fields
from pathseqsam.synthetic.slides import make_slide_scene


@pytest.mark.parametrize("ell", [0.0, 2.0, 8.0, math.inf])
def test_marginal_is_uniform_at_every_length(ell):
    rng = np.random.default_rng(0)
    draws = 400 if math.isinf(ell) else 6
    u = np.concatenate([correlated_uniform((96, 96), ell, rng)[::4, ::4].ravel() for _ in range(draws)])
    assert abs(u.mean() - 0.5) < 0.03
    assert abs((u > 1 - DAMAGE_FRACTION).mean() - DAMAGE_FRACTION) < 0.04  # damaged share: 0.3
    hist, _ = np.histogram(u, bins=5, range=(0, 1))
    assert np.abs(hist / hist.sum() - 0.2).max() < 0.04


def test_correlation_follows_the_length():
    """Empirical correlation of the Gaussian field at lag r against exp(-(r / ell)^2)."""
    rng = np.random.default_rng(1)
    ell = 8.0
    fields = [ndtri(np.clip(correlated_uniform((128, 128), ell, rng), 1e-7, 1 - 1e-7)) for _ in range(20)]
    for lag in (4, 8):
        a = np.concatenate([f[:, :-lag].ravel() for f in fields])
        b = np.concatenate([f[:, lag:].ravel() for f in fields])
        assert abs(np.corrcoef(a, b)[0, 1] - math.exp(-((lag / ell) ** 2))) < 0.08
    white = correlated_uniform((128, 128), 0.0, rng)
    assert abs(np.corrcoef(white[:, :-1].ravel(), white[:, 1:].ravel())[0, 1]) < 0.03


def test_fields_change_colours_not_the_scene():
    plain = make_slide_scene(1024, 1024, 1.0, n_glomeruli=20, seed=5)
    varied = make_slide_scene(1024, 1024, 1.0, n_glomeruli=20, seed=5, ell_strides=2.0)
    assert np.array_equal(plain.glomeruli, varied.glomeruli) and np.array_equal(
        plain.sections, varied.sections
    )
    rgb_p, mask_p = plain.render(0, 0, 512, 512, 2.0)
    rgb_v, mask_v = varied.render(0, 0, 512, 512, 2.0)
    assert np.array_equal(mask_p, mask_v)  # the truth never moves
    assert np.abs(rgb_p.astype(int) - rgb_v.astype(int)).mean() > 3  # the look does
    # same field on every level: a level-1 region is the level-0 one at half the pixels
    full, _ = varied.render(0, 0, 1024, 1024, 1.0)
    half, _ = varied.render(0, 0, 512, 512, 2.0)
    assert np.abs(full[1::2, 1::2].astype(int) - half.astype(int)).mean() < 6


def test_each_factor_draws_its_own_stream():
    a = make_slide_fields(512, 512, 1.0, 128.0, 2.0, seed=3).values
    b = make_slide_fields(512, 512, 1.0, 128.0, 2.0, seed=3).values
    assert np.array_equal(a, b)
    assert not np.allclose(a[0], a[1])  # stain and thickness are different fields
    with pytest.raises(ValueError, match="stride_um > 0 and ell_strides >= 0"):
        make_slide_fields(512, 512, 1.0, 0.0, 2.0, seed=3)
