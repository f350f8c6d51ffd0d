"""Section damage the way it happens at the microtome and the scanner.

Kinds (a degraded section gets one, sometimes two):

* ``fade``: weak staining (stain amounts x 0.15-0.4, unevenly across the section): tuft, tubules and
  interstitium converge to the same pale pink;
* ``blur``: out-of-focus scan (Gaussian, sigma 5-9 um): capillary loops, Bowman's space and nuclei
  disappear, glomeruli and tubule clusters become similar blobs;
* ``fold``: a strip of tissue folded over its neighbour (double thickness, mirrored content);
* ``tear``: a crack through the section (bare glass along a wavy line);
* ``loss``: a piece of the section lost (bare glass over 20-45 % of the field).

Folds, tears and losses are aimed at a glomerulus most of the time, so the damage removes exactly the
evidence a per-slice model needs. The mask is NOT changed: it stays the glomerulus cross-section at
that depth (the question a stack answers), which the clean sections a few micrometres away reveal.
Tears and losses record where the glass is bare (:attr:`Degradation.lost`), so a generator asked for
honest masks can clear the truth there; recording it draws no random number, so it changes no image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pathseqsam.synthetic.tissue import concentrations_to_rgb

__all__ = [
    "DEGRADATION_KINDS",
    "Degradation",
    "apply_degradation",
    "choose_degraded_sections",
    "sample_degradation",
]

DEGRADATION_KINDS = ("fade", "blur", "fold", "tear", "loss")
_PRIMARY_WEIGHTS = np.array([0.25, 0.25, 0.15, 0.15, 0.20])


@dataclass
class Degradation:
    """What was done to one section.

    Attributes:
        kinds: names from :data:`DEGRADATION_KINDS`, in the order applied.
        params: parameters actually drawn, for the record (JSON-serialisable).
        lost: bool ``[H, W]`` where a tear or a loss left bare glass (None when neither was applied);
            filled by :func:`apply_degradation`. Folds are not in it: folded tissue is still tissue.
    """

    kinds: list[str]
    params: dict[str, float] = field(default_factory=dict)
    lost: np.ndarray | None = field(default=None, repr=False, compare=False)


def choose_degraded_sections(rng: np.random.Generator, n: int, fraction: float) -> list[int]:
    """Pick about ``fraction * n`` sections to damage, never two neighbours and never all of them, so
    every damaged section has an intact neighbour.

    Args:
        rng: random generator.
        n: number of sections.
        fraction: wanted fraction in [0, 0.5].

    Returns:
        Sorted indices.
    """
    if not 0.0 <= fraction <= 0.5:
        raise ValueError(f"degraded fraction must be in [0, 0.5] (no two neighbours damaged), got {fraction}")
    want = min(round(fraction * n), (n + 1) // 2 if n > 2 else n - 1)
    chosen: list[int] = []
    for i in rng.permutation(n):
        if len(chosen) == want:
            break
        if all(abs(int(i) - j) > 1 for j in chosen):
            chosen.append(int(i))
    return sorted(chosen)


def sample_degradation(rng: np.random.Generator) -> Degradation:
    """Draw one or two damage kinds (a second one with probability 0.4).

    Args:
        rng: random generator.

    Returns:
        The :class:`Degradation` (parameters are drawn when applied).
    """
    first = int(rng.choice(len(DEGRADATION_KINDS), p=_PRIMARY_WEIGHTS))
    kinds = [DEGRADATION_KINDS[first]]
    if rng.random() < 0.4:
        weights = _PRIMARY_WEIGHTS.copy()
        weights[first] = 0.0
        kinds.append(DEGRADATION_KINDS[int(rng.choice(len(DEGRADATION_KINDS), p=weights / weights.sum()))])
    # Blur acts on the scanned image, so it goes last.
    kinds.sort(key=lambda k: k == "blur")
    return Degradation(kinds=kinds)


def _target(rng: np.random.Generator, mask: np.ndarray, size: int) -> np.ndarray:
    """A point (x, y) in pixels: a glomerulus centre with probability 0.8 when there is one."""
    if mask.any() and rng.random() < 0.8:
        labels, count = ndimage.label(mask)
        k = int(rng.integers(1, count + 1))
        cy, cx = ndimage.center_of_mass(labels == k)
        return np.array([cx, cy]) + rng.normal(0.0, 0.05 * size, size=2)
    return rng.uniform(0.15 * size, 0.85 * size, size=2)


def _line_coords(size: int, point: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance (px) to the line through ``point`` at ``angle``, and position along it."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    nx, ny = -np.sin(angle), np.cos(angle)
    across = (xx - point[0]) * nx + (yy - point[1]) * ny
    along = (xx - point[0]) * ny - (yy - point[1]) * nx
    return across, along


def apply_degradation(
    deg: Degradation,
    amounts: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    step_um: float,
    stains: np.ndarray,
) -> np.ndarray:
    """Damage one section and return its RGB image.

    Args:
        deg: kinds to apply; ``deg.params`` is filled with what was drawn.
        amounts: float32 ``[3, H, W]`` stain amounts of the clean section (not modified).
        mask: bool ``[H, W]`` glomerulus mask (used to aim the damage; not modified).
        rng: random generator.
        step_um: pixel size in um.
        stains: ``[3, 3]`` stain optical densities of the case.

    Returns:
        float32 RGB ``[H, W, 3]`` in [0, 1].
    """
    size = amounts.shape[-1]
    out = amounts.copy()
    rgb = None
    for kind in deg.kinds:
        if kind == "fade":
            level = float(rng.uniform(0.15, 0.4))
            angle = rng.uniform(0, 2 * np.pi)
            _, along = _line_coords(size, np.array([size / 2, size / 2]), angle)
            uneven = 1.0 + 0.35 * along / size  # stronger fading towards one side
            out = (
                out
                * np.clip(level * uneven, 0.05, 1.0)[None]
                * np.array([1.1, 1.0, 1.0], np.float32)[:, None, None]
            )
            deg.params["fade_level"] = level
        elif kind == "fold":
            point = _target(rng, mask, size)
            angle = rng.uniform(0, np.pi)
            width = float(rng.uniform(15.0, 40.0)) / step_um
            across, _ = _line_coords(size, point, angle)
            band = (across >= 0) & (across < width)
            # The strip folded over comes from the other side of the crease (mirror image).
            nx, ny = -np.sin(angle), np.cos(angle)
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
            src_x = np.clip(xx - 2 * across * nx, 0, size - 1)
            src_y = np.clip(yy - 2 * across * ny, 0, size - 1)
            mirrored = np.stack([ndimage.map_coordinates(c, [src_y, src_x], order=1) for c in out])
            out = np.where(band[None], out + 0.9 * mirrored + 0.05, out)
            deg.params.update(fold_width_um=width * step_um)
        elif kind in ("tear", "loss"):
            point = _target(rng, mask, size)
            if kind == "tear":
                angle = rng.uniform(0, np.pi)
                across, along = _line_coords(size, point, angle)
                wobble = 0.06 * size * np.sin(along / size * rng.uniform(4, 9) + rng.uniform(0, 2 * np.pi))
                width = float(rng.uniform(5.0, 16.0)) / step_um
                length = float(rng.uniform(0.5, 1.0)) * size
                hole = (np.abs(across - wobble) < width / 2) & (np.abs(along) < length / 2)
                deg.params.update(tear_width_um=width * step_um)
            else:
                yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
                radius = float(rng.uniform(0.25, 0.38)) * size
                ragged = ndimage.gaussian_filter(
                    rng.standard_normal((size, size)).astype(np.float32), size / 20
                )
                ragged /= ragged.std() + 1e-6
                hole = np.hypot(xx - point[0], yy - point[1]) < radius * (1.0 + 0.25 * ragged)
                deg.params.update(loss_fraction=float(hole.mean()))
            out = np.where(hole[None], out * 0.03, out)
            deg.lost = hole if deg.lost is None else deg.lost | hole
        elif kind == "blur":
            rgb = concentrations_to_rgb(out, stains) if rgb is None else rgb
            sigma = float(rng.uniform(5.0, 9.0)) / step_um
            rgb = ndimage.gaussian_filter(rgb, (sigma, sigma, 0))
            deg.params["blur_sigma_um"] = sigma * step_um
        else:  # pragma: no cover - guarded by DEGRADATION_KINDS
            raise ValueError(f"unknown degradation {kind!r}")
    return concentrations_to_rgb(out, stains) if rgb is None else rgb.astype(np.float32)
