"""The study's dials: the properties of a serial-section stack that Eq. 1 and Eq. 2 could use, each
with a null setting, each drawn from its own random stream.

A dial changes one property of the stacks and nothing else: every random quantity of a case comes
from its own :class:`numpy.random.SeedSequence` child (``spawn_key = (case, stream, ...)``, see
:data:`STREAMS`), so turning the spacing dial leaves the damage and the poses as they were, turning
the damage dial leaves depths, tissue and poses, and turning misregistration leaves depths, tissue
and damage. All lengths are micrometres.

* **spacing** (:func:`section_gaps`): ``"constant"`` (null): every gap is :data:`CONSTANT_GAP_UM`;
  ``"variable"``: a cut thickness of :data:`SECTION_UM` +- 20 % times one plus a run of lost
  sections (with probability :data:`LOSS_PROBABILITY` a geometric run, mean :data:`LOSS_RUN_MEAN`),
  at most :data:`MAX_GAP_UM`: gaps of about 3-50 um. Depths stay sub-pixel (floats in um). The
  constant gap is close to the variable process's mean, so both settings section the same depth of
  tissue on average.
* **burst** (:func:`damage_flags`): damage as a two-state Markov chain started from its stationary
  law, damaged fraction :data:`DAMAGED_FRACTION` in expectation at every setting, mean burst length
  1 (null: a damaged section is always followed by a clean one), 4 or 8. A burst may start at
  slice 0.
* **misregistration** (:func:`section_poses`): ``"registered"`` (null) or ``"pose"``: an independent
  pose per section (shift sigma :data:`SHIFT_SIGMA_UM` per axis, rotation sigma
  :data:`ROTATION_SIGMA_DEG`, both cut at 3 sigma), not a random walk. Sections are rendered on a
  canvas wider than the field by :func:`canvas_margin_um` at every setting (so the tissue is the same
  whether the dial is on or off) and the field is cut out of the moved canvas; the mask moves with
  the image.

Any dial may also be ``"mix"``: each case draws its own setting (uniformly) from its own stream,
which is how the study's training sets mix the settings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "BURST_SETTINGS",
    "CONSTANT_GAP_UM",
    "DAMAGED_FRACTION",
    "GLOMERULI_PER_MM3",
    "LOSS_PROBABILITY",
    "LOSS_RUN_MEAN",
    "MAX_GAP_UM",
    "MISREGISTRATION_SETTINGS",
    "NULL_DIALS",
    "ROTATION_SIGMA_DEG",
    "SECTION_UM",
    "SHIFT_SIGMA_UM",
    "SPACING_SETTINGS",
    "STREAMS",
    "Dials",
    "canvas_margin_um",
    "damage_flags",
    "dial_stream",
    "move_section",
    "section_gaps",
    "section_poses",
]

SPACING_SETTINGS = ("constant", "variable")
BURST_SETTINGS = (1.0, 4.0, 8.0)
MISREGISTRATION_SETTINGS = ("registered", "pose")

SECTION_UM = 4.0  # nominal cut thickness
LOSS_PROBABILITY = 0.3  # chance that a run of sections is lost between two kept ones
LOSS_RUN_MEAN = 3.0  # mean length of a lost run (geometric, >= 1)
MAX_GAP_UM = 50.0
CONSTANT_GAP_UM = 7.5  # about the variable process's mean gap (tests check it is within 10 %)
DAMAGED_FRACTION = 0.3
SHIFT_SIGMA_UM = 30.0
ROTATION_SIGMA_DEG = 10.0
POSE_CUT_SIGMAS = 3.0
# Glomeruli per mm^3 of the study's blocks (denser than cortex, as the original generator is): with the
# study's 256 um field about 0.7 of the sections cut one at every setting (tests/synthetic/test_dials.py).
GLOMERULI_PER_MM3 = 150.0

# one SeedSequence child per random quantity of a case: spawn_key = (case, STREAMS[name], ...)
STREAMS = {
    "count": 101,
    "spacing": 102,
    "tissue": 103,
    "damage": 104,
    "damage_kind": 105,
    "damage_apply": 106,
    "pose": 107,
    "render": 108,
    "mix": 109,
}


def dial_stream(seed: int, case: int, name: str, *extra: int) -> np.random.Generator:
    """The random generator of one quantity of one case (independent of every other stream).

    Args:
        seed: dataset seed.
        case: case index.
        name: a key of :data:`STREAMS`.
        extra: further indices (the section, for per-section streams).

    Returns:
        A fresh generator.
    """
    key = (int(case), STREAMS[name], *(int(e) for e in extra))
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=key))


@dataclass(frozen=True)
class Dials:
    """Settings of the three dials (see the module docstring); the defaults are the nulls.

    Attributes:
        spacing: ``"constant"``, ``"variable"`` or ``"mix"``.
        burst: mean damage burst length in sections (1, 4 or 8) or ``"mix"``.
        misregistration: ``"registered"``, ``"pose"`` or ``"mix"``.
    """

    spacing: str = "constant"
    burst: float | str = 1.0
    misregistration: str = "registered"

    def __post_init__(self) -> None:
        if self.spacing not in (*SPACING_SETTINGS, "mix"):
            raise ValueError(
                f"dial spacing must be one of {(*SPACING_SETTINGS, 'mix')}, got {self.spacing!r}"
            )
        if self.misregistration not in (*MISREGISTRATION_SETTINGS, "mix"):
            raise ValueError(
                f"dial misregistration must be one of {(*MISREGISTRATION_SETTINGS, 'mix')}, "
                f"got {self.misregistration!r}"
            )
        if self.burst != "mix":
            try:
                burst = float(self.burst)
            except (TypeError, ValueError):
                burst = float("nan")
            if not burst >= 1.0:
                raise ValueError(
                    f"dial burst must be a mean burst length >= 1 (1, 4, 8) or 'mix', got {self.burst!r}"
                )
            object.__setattr__(self, "burst", burst)

    def resolve(self, seed: int, case: int) -> Dials:
        """The settings of one case: ``"mix"`` dials drawn from the case's own ``mix`` stream.

        The stream always draws one number per dial, so mixing one dial does not change the
        settings another mixed dial draws.
        """
        u = dial_stream(seed, case, "mix").random(3)
        pick = lambda options, x: options[min(int(x * len(options)), len(options) - 1)]  # noqa: E731
        return Dials(
            spacing=pick(SPACING_SETTINGS, u[0]) if self.spacing == "mix" else self.spacing,
            burst=pick(BURST_SETTINGS, u[1]) if self.burst == "mix" else self.burst,
            misregistration=(
                pick(MISREGISTRATION_SETTINGS, u[2])
                if self.misregistration == "mix"
                else self.misregistration
            ),
        )

    def as_dict(self) -> dict[str, float | str]:
        """JSON-serialisable record."""
        return asdict(self)

    def label(self) -> str:
        """One string for datalists (``spacing=variable;burst=8;misregistration=pose``)."""
        burst = self.burst if self.burst == "mix" else f"{float(self.burst):g}"
        return f"spacing={self.spacing};burst={burst};misregistration={self.misregistration}"


NULL_DIALS = Dials()


def section_gaps(rng: np.random.Generator, n: int, setting: str) -> np.ndarray:
    """The ``n - 1`` gaps between consecutive sections, um.

    Args:
        rng: the case's ``spacing`` stream.
        n: number of sections.
        setting: ``"constant"`` or ``"variable"``.

    Returns:
        float64 ``[n - 1]``.
    """
    if setting == "constant":
        return np.full(max(n - 1, 0), CONSTANT_GAP_UM)
    if setting != "variable":
        raise ValueError(f"spacing setting must be one of {SPACING_SETTINGS}, got {setting!r}")
    # fixed number of draws per gap, so gap i does not depend on the draws of gap i - 1
    thickness = SECTION_UM * rng.uniform(0.8, 1.2, size=max(n - 1, 0))
    lost_run = rng.random(max(n - 1, 0)) < LOSS_PROBABILITY
    run = rng.geometric(1.0 / LOSS_RUN_MEAN, size=max(n - 1, 0))
    lost = np.where(lost_run, run, 0)
    most = np.floor(MAX_GAP_UM / thickness) - 1  # at most MAX_GAP_UM
    return thickness * (1 + np.minimum(lost, most))


def damage_flags(
    rng: np.random.Generator, n: int, mean_burst: float, fraction: float = DAMAGED_FRACTION
) -> np.ndarray:
    """Which sections are damaged: a stationary two-state Markov chain.

    From damaged, stay damaged with ``1 - 1 / mean_burst`` (bursts are geometric with that mean);
    from clean, become damaged with ``fraction / (1 - fraction) / mean_burst``, which makes
    ``fraction`` the stationary share. Section 0 is damaged with probability ``fraction``.

    Args:
        rng: the case's ``damage`` stream (exactly ``n`` numbers are drawn).
        n: number of sections.
        mean_burst: mean burst length in sections (>= 1; 1: never two damaged neighbours).
        fraction: stationary damaged fraction (< 1 / (1 + 1 / mean_burst) for a valid chain).

    Returns:
        bool ``[n]``.
    """
    stay = 1.0 - 1.0 / mean_burst
    start = fraction / (1.0 - fraction) / mean_burst
    if not (0.0 <= fraction < 1.0 and 0.0 <= start <= 1.0):
        raise ValueError(f"no Markov chain has damaged fraction {fraction} with mean burst {mean_burst}")
    u = rng.random(n)
    flags = np.zeros(n, dtype=bool)
    for i in range(n):
        p = fraction if i == 0 else (stay if flags[i - 1] else start)
        flags[i] = u[i] < p
    return flags


def section_poses(rng: np.random.Generator, n: int, setting: str) -> np.ndarray:
    """Independent in-plane poses ``[n, 3]``: shift x, shift y (um), rotation (degrees).

    Args:
        rng: the case's ``pose`` stream (``3 n`` numbers are drawn whatever the setting).
        n: number of sections.
        setting: ``"registered"`` (all zero) or ``"pose"``.

    Returns:
        float64 ``[n, 3]``, each cut at :data:`POSE_CUT_SIGMAS` sigmas.
    """
    z = np.clip(rng.standard_normal((n, 3)), -POSE_CUT_SIGMAS, POSE_CUT_SIGMAS)
    if setting == "registered":
        return np.zeros((n, 3))
    if setting != "pose":
        raise ValueError(
            f"misregistration setting must be one of {MISREGISTRATION_SETTINGS}, got {setting!r}"
        )
    return z * np.array([SHIFT_SIGMA_UM, SHIFT_SIGMA_UM, ROTATION_SIGMA_DEG])


def canvas_margin_um(field_um: float) -> float:
    """How far the rendered canvas reaches beyond the field on every side, um.

    The largest pose (3 sigma shift on both axes and 3 sigma rotation) must still find tissue under
    every pixel of the field: a field of half-width h rotated by theta spans h (cos + sin) per axis.
    """
    half = 0.5 * field_um
    theta = math.radians(POSE_CUT_SIGMAS * ROTATION_SIGMA_DEG)
    return half * (math.cos(theta) + math.sin(theta) - 1.0) + POSE_CUT_SIGMAS * SHIFT_SIGMA_UM


def move_section(
    amounts: np.ndarray, mask: np.ndarray, pose: np.ndarray, size: int, mpp_um: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cut the ``size`` x ``size`` field out of a canvas, the section moved by ``pose``.

    A field point at ``(x, y)`` um from the field's centre (x to the right, y down) shows the canvas
    point ``canvas centre + pose[:2] + R (x, y)``, ``R`` the rotation by ``pose[2]`` degrees
    (``(x cos - y sin, x sin + y cos)``). Image and mask are sampled at the same points (linear for
    the stain amounts, nearest for the mask). A zero pose is an exact crop (no resampling).

    Args:
        amounts: float32 ``[3, Hc, Wc]`` canvas stain amounts.
        mask: bool ``[Hc, Wc]`` canvas mask.
        pose: (shift x um, shift y um, rotation degrees).
        size: field side in pixels.
        mpp_um: pixel size in um.

    Returns:
        ``(amounts [3, size, size], mask [size, size])``.
    """
    canvas = amounts.shape[-1]
    margin = (canvas - size) // 2
    if not np.any(pose):
        window = (slice(margin, margin + size), slice(margin, margin + size))
        return np.ascontiguousarray(amounts[(slice(None), *window)]), mask[window].copy()
    c, s = math.cos(math.radians(pose[2])), math.sin(math.radians(pose[2]))
    matrix = np.array([[c, s], [-s, c]])  # R in (row, col) = (y, x) order
    centre_out = np.full(2, (size - 1) / 2.0)
    centre_in = np.full(2, (canvas - 1) / 2.0) + np.array([pose[1], pose[0]]) / mpp_um
    offset = centre_in - matrix @ centre_out
    moved = np.stack(
        [
            ndimage.affine_transform(a, matrix, offset, output_shape=(size, size), order=1, mode="nearest")
            for a in amounts
        ]
    )
    moved_mask = ndimage.affine_transform(
        mask.astype(np.uint8), matrix, offset, output_shape=(size, size), order=0, mode="constant"
    ).astype(bool)
    return moved.astype(np.float32), moved_mask
