"""Slide-wide variation with a correlation length: stain, section thickness, focus and damage.

On a real slide, stain, thickness, focus and damage do not change tile by tile at random: they drift
over the slide. How far a tile's neighbours share its conditions is what a tile sequence can use
(memory of the tile above says how the stain looks here), and what per-tile inference cannot. The
whole-slide sequence benchmark therefore varies one thing, the correlation length ``ell`` of these
factors, and keeps their distribution fixed:

* each factor is ``u = Phi(g)`` of a stationary Gaussian field ``g`` with unit variance and
  correlation ``exp(-(r / ell)**2)`` (white noise smoothed by a Gaussian of sigma ``ell / 2``, scaled
  back to unit variance), so ``u`` is uniform on [0, 1] at every point for every ``ell``;
* ``ell = 0``: independent cells; ``ell = inf``: one value per slide;
* the field is piecewise constant on cells of a quarter stride (a bilinear blend of independent
  cells would not be uniform), looked up at level-0 coordinates, so every pyramid level and tile
  sees the same field.

What each factor does to a pixel (:func:`apply_fields`): ``stain`` blends the PAS palette towards a
paler, bluer one; ``thickness`` scales optical density by 0.6-1.4; ``focus`` softens glomerulus
edges (up to 6 um) and flattens texture; ``damage`` fades the tissue where ``u > 0.7`` (30 % of the
area at every ``ell``). The truth mask never changes: faded or blurred glomeruli are still there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DAMAGE_FRACTION",
    "FACTORS",
    "MAX_BLUR_UM",
    "SlideFields",
    "apply_fields",
    "correlated_uniform",
    "make_slide_fields",
]

FACTORS = ("stain", "thickness", "focus", "damage")
DAMAGE_FRACTION = 0.3
MAX_BLUR_UM = 6.0
CELLS_PER_STRIDE = 4


def correlated_uniform(shape: tuple[int, int], ell_cells: float, rng: np.random.Generator) -> np.ndarray:
    """A field uniform on [0, 1] at every cell, correlated as ``exp(-(r / ell)**2)``.

    Args:
        shape: ``(rows, cols)`` cells.
        ell_cells: correlation length in cells; 0: independent cells; ``inf``: one value.
        rng: random generator (its draws are the only randomness).

    Returns:
        ``float32 [rows, cols]``.
    """
    from scipy.ndimage import gaussian_filter
    from scipy.special import ndtr

    if math.isinf(ell_cells):
        return np.full(shape, ndtr(rng.standard_normal()), dtype=np.float32)
    if ell_cells <= 0:
        return ndtr(rng.standard_normal(shape)).astype(np.float32)
    sigma = ell_cells / 2.0  # white noise * Gaussian(sigma) has correlation exp(-r^2 / (4 sigma^2))
    pad = math.ceil(4 * sigma)
    noise = rng.standard_normal((shape[0] + 2 * pad, shape[1] + 2 * pad))
    smooth = gaussian_filter(noise, sigma, mode="constant", truncate=4.0)
    # unit variance in the interior: divide by the kernel's L2 norm (the filter of a unit impulse)
    impulse = np.zeros((2 * pad + 1, 2 * pad + 1))
    impulse[pad, pad] = 1.0
    norm = np.sqrt((gaussian_filter(impulse, sigma, mode="constant", truncate=4.0) ** 2).sum())
    g = smooth[pad : pad + shape[0], pad : pad + shape[1]] / norm
    return ndtr(g).astype(np.float32)


@dataclass
class SlideFields:
    """The four factor fields of one slide, piecewise constant on square cells.

    Attributes:
        values: ``[4, rows, cols]`` uniform values of :data:`FACTORS`.
        cell_px: level-0 pixels per cell.
        mpp_um: micrometres per level-0 pixel.
        ell_strides: the correlation length in tile strides (recorded, not used in rendering).
    """

    values: np.ndarray
    cell_px: float
    mpp_um: float
    ell_strides: float

    def at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``[4, *x.shape]`` factor values at level-0 pixel coordinates ``x``, ``y``."""
        rows, cols = self.values.shape[1:]
        i = np.clip((y / self.cell_px).astype(np.int64), 0, rows - 1)
        j = np.clip((x / self.cell_px).astype(np.int64), 0, cols - 1)
        return self.values[:, i, j]


def make_slide_fields(
    width: int,
    height: int,
    mpp_um: float,
    stride_um: float,
    ell_strides: float,
    seed: int | np.random.SeedSequence,
) -> SlideFields:
    """Draw the factor fields of a ``width x height`` slide.

    Args:
        width: level-0 width in pixels.
        height: level-0 height in pixels.
        mpp_um: micrometres per pixel.
        stride_um: the tile stride the correlation length is measured in.
        ell_strides: correlation length in strides (0, 0.5, 2, ``inf`` in the benchmark).
        seed: seed (each factor draws from its own child, so one factor never shifts another).

    Returns:
        The fields.
    """
    if not stride_um > 0 or ell_strides < 0:
        raise ValueError(f"need stride_um > 0 and ell_strides >= 0, got {stride_um}, {ell_strides}")
    cell_px = stride_um / CELLS_PER_STRIDE / mpp_um
    shape = (math.ceil(height / cell_px), math.ceil(width / cell_px))
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    children = root.spawn(len(FACTORS))
    values = np.stack(
        [
            correlated_uniform(shape, ell_strides * CELLS_PER_STRIDE, np.random.default_rng(child))
            for child in children
        ]
    )
    return SlideFields(values, cell_px, mpp_um, float(ell_strides))


# the pale, bluish end of the stain blend (PAS on a thin, under-stained section)
_PALE_TISSUE = np.array([214.0, 178.0, 214.0])
_PALE_GLOMERULUS = np.array([170.0, 120.0, 185.0])


def apply_fields(
    rgb: np.ndarray,
    background: np.ndarray,
    tissue: np.ndarray,
    glom_alpha: np.ndarray,
    values: np.ndarray,
    tissue_colour: np.ndarray,
    glom_colour: np.ndarray,
) -> np.ndarray:
    """Recolour a rendered region with the factor values at its pixels.

    Args:
        rgb: ``float [H, W, 3]`` the region as drawn without fields (tissue texture included).
        background: glass colour ``[3]``.
        tissue: ``bool [H, W]``.
        glom_alpha: ``float [H, W]`` glomerulus coverage, soft at blurred edges.
        values: ``[4, H, W]`` factor values (:meth:`SlideFields.at`).
        tissue_colour: the unblended tissue colour ``[3]``.
        glom_colour: the unblended glomerulus colour ``[3]``.

    Returns:
        ``float [H, W, 3]``.
    """
    stain, thickness, _focus, damage = values
    s = stain[..., None]
    # stain: shift towards the pale palette by the same amount for tissue and glomeruli
    shift_t = s * (_PALE_TISSUE - tissue_colour)
    shift_g = s * (_PALE_GLOMERULUS - glom_colour)
    a = glom_alpha[..., None]
    out = np.where(tissue[..., None], rgb + (1 - a) * shift_t + a * shift_g, rgb)
    # thickness: optical density x 0.6-1.4
    k = (0.6 + 0.8 * thickness)[..., None]
    out = np.where(tissue[..., None], 255.0 - k * (255.0 - out), out)
    # damage (fading) on the top 30 % of its field
    faded = (damage > 1.0 - DAMAGE_FRACTION) & tissue
    out = np.where(faded[..., None], background + 0.35 * (out - background), out)
    return out
