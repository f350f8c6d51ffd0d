"""A 3D block of kidney-cortex-like tissue and its rendering into stained sections (PAS or H&E).

Everything is defined in micrometres in 3D, so consecutive sections a few micrometres apart show
slowly changing cross-sections of the same structures, and the glomerulus mask of a section is the
exact cross-section of the 3D geometry at the section's depth.

Structures (sizes for mouse kidney, whose glomeruli are 60-120 um across):

* glomeruli: ellipsoids with a thin PAS-magenta Bowman's capsule, a pale Bowman's space ring and an
  off-centre, lobulated capillary tuft (PAS-positive mesangium/basement membranes around open
  capillary lumens holding red cells, densely packed nuclei);
* tubules: curved tubes in random 3D directions (round to elongated profiles), epithelium around a
  lumen, PAS-positive basement membrane; proximal tubules (most) carry a magenta brush border; each
  pixel belongs to the tube with the nearest centre line, so tubules pack like real cortex;
* arterioles: tubes with a thick muscular wall, a magenta elastic lamina and red cells in the lumen
  (round, ring-like hard negatives);
* interstitium: pale fibrous stroma with sparse nuclei and small artefactual gaps; sometimes a tissue
  edge with bare glass beyond it;
* inflammatory infiltrates: irregular 3D clusters of crowded nuclei in the interstitium, and distal
  tubules / collecting ducts with more crowded nuclei than proximal tubules: hard negatives for
  "glomeruli are where the nuclei are dense".

Nuclei and red cells are 3D spheres, so each appears in one or two sections like real ones. Stains
are rendered with the Beer-Lambert law from per-pixel amounts of haematoxylin, PAS-magenta and red
cell pigment, with per-case stain vectors and per-compartment stain ratios, so colour alone does
not separate glomeruli from tubules. Named stain presets (:data:`STAIN_PRESETS`) change what the
channels look like and which compartments take them up: ``"pas"`` (the default, the demo's look) and
``"he"`` (haematoxylin and eosin, the look of the data SAM2 is pretrained on, which is not the task).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from scipy import ndimage

__all__ = [
    "DIFFICULTIES",
    "GLOMERULUS_REACH_UM",
    "STAIN_PRESETS",
    "Compartment",
    "Glomerulus",
    "SectionRender",
    "StainPreset",
    "TissueBlock",
    "TubeKind",
    "concentrations_to_rgb",
    "make_tissue_block",
    "render_section",
]


class Compartment(IntEnum):
    """Codes of the rendered compartment map (one per pixel); each has its own stain amounts."""

    GLASS = 0
    INTERSTITIUM = 1
    EPITHELIUM = 2
    TUBULE_LUMEN = 3
    BRUSH_BORDER = 4
    TUBULE_BM = 5
    TUFT = 6
    CAPILLARY_LUMEN = 7
    BOWMAN_SPACE = 8
    CAPSULE = 9
    VESSEL_WALL = 10
    VESSEL_LUMEN = 11
    ELASTIC_LAMINA = 12
    INFILTRATE = 13  # interstitium crowded with inflammatory cells


N_COMPARTMENTS = len(Compartment)

DIFFICULTIES = ("realistic", "easy")


class TubeKind(IntEnum):
    """Kinds of tubes in the block: three tubule segments and the arterioles (hard negatives)."""

    PROXIMAL = 0
    DISTAL = 1
    COLLECTING = 2
    ARTERIOLE = 3


# Optical density (R, G, B) of one unit of each stain: haematoxylin (blue-purple nuclei), PAS
# (magenta basement membranes, brush borders, mesangium), red-cell pigment (orange-red).
_BASE_STAINS = np.array(
    [
        [1.29, 1.45, 0.60],  # haematoxylin ~ RGB (70, 60, 140) at 1 unit
        [0.29, 1.85, 0.53],  # PAS magenta ~ RGB (190, 40, 150)
        [0.15, 0.76, 0.84],  # red cells ~ RGB (220, 120, 110)
    ]
)

# Base stain amounts (haematoxylin, PAS, red) per compartment, before texture and per-case ratios.
_BASE_AMOUNTS = np.zeros((N_COMPARTMENTS, 3))
_BASE_AMOUNTS[Compartment.INTERSTITIUM] = (0.03, 0.13, 0.0)
_BASE_AMOUNTS[Compartment.EPITHELIUM] = (0.06, 0.40, 0.0)
_BASE_AMOUNTS[Compartment.TUBULE_LUMEN] = (0.01, 0.04, 0.0)
_BASE_AMOUNTS[Compartment.BRUSH_BORDER] = (0.03, 0.85, 0.0)
_BASE_AMOUNTS[Compartment.TUBULE_BM] = (0.02, 0.95, 0.0)
_BASE_AMOUNTS[Compartment.TUFT] = (0.08, 0.62, 0.0)
_BASE_AMOUNTS[Compartment.CAPILLARY_LUMEN] = (0.01, 0.06, 0.0)
_BASE_AMOUNTS[Compartment.BOWMAN_SPACE] = (0.0, 0.03, 0.0)
_BASE_AMOUNTS[Compartment.CAPSULE] = (0.03, 0.95, 0.0)
_BASE_AMOUNTS[Compartment.VESSEL_WALL] = (0.08, 0.42, 0.0)
_BASE_AMOUNTS[Compartment.VESSEL_LUMEN] = (0.0, 0.03, 0.0)
_BASE_AMOUNTS[Compartment.ELASTIC_LAMINA] = (0.02, 1.0, 0.0)
_BASE_AMOUNTS[Compartment.INFILTRATE] = (0.06, 0.22, 0.0)


@dataclass(frozen=True)
class StainPreset:
    """A named staining protocol: what each of the three rendered stain channels looks like and how much
    of it each compartment takes up (per-case variation is drawn on top of these, with the same random
    draws for every preset, so one seed gives the same tissue in every stain).

    Attributes:
        name: preset name (a key of :data:`STAIN_PRESETS`).
        stains: ``[3, 3]`` optical density (R, G, B) of one unit of each channel: nuclear stain,
            counterstain, red-cell pigment.
        amounts: ``[N_COMPARTMENTS, 3]`` channel amounts per compartment before texture.
        description: what it imitates.
    """

    name: str
    stains: np.ndarray
    amounts: np.ndarray
    description: str


# H&E: haematoxylin (blue nuclei) with eosin as the counterstain. Eosin colours cytoplasm, not
# basement membranes: proximal tubule cells and smooth muscle are the pinkest, basement membranes,
# capsule and mesangium only moderately, red cells bright orange-red. Stain directions after
# Ruifrok & Johnston (2001): haematoxylin (0.65, 0.70, 0.29), eosin (0.07, 0.99, 0.11).
_HE_STAINS = np.array(
    [
        [1.20, 1.30, 0.55],  # haematoxylin ~ RGB (75, 65, 145) at 1 unit: bluer than the PAS case's
        [0.10, 1.35, 0.25],  # eosin ~ RGB (225, 65, 195) at 1 unit: pink
        [0.08, 1.05, 1.00],  # red cells ~ RGB (235, 90, 95)
    ]
)
_HE_AMOUNTS = np.zeros((N_COMPARTMENTS, 3))
_HE_AMOUNTS[Compartment.INTERSTITIUM] = (0.03, 0.10, 0.0)
_HE_AMOUNTS[Compartment.EPITHELIUM] = (0.05, 0.62, 0.0)
_HE_AMOUNTS[Compartment.TUBULE_LUMEN] = (0.01, 0.03, 0.0)
_HE_AMOUNTS[Compartment.BRUSH_BORDER] = (0.03, 0.50, 0.0)
_HE_AMOUNTS[Compartment.TUBULE_BM] = (0.02, 0.30, 0.0)
_HE_AMOUNTS[Compartment.TUFT] = (0.12, 0.42, 0.0)
_HE_AMOUNTS[Compartment.CAPILLARY_LUMEN] = (0.01, 0.05, 0.0)
_HE_AMOUNTS[Compartment.BOWMAN_SPACE] = (0.0, 0.02, 0.0)
_HE_AMOUNTS[Compartment.CAPSULE] = (0.03, 0.35, 0.0)
_HE_AMOUNTS[Compartment.VESSEL_WALL] = (0.06, 0.75, 0.0)
_HE_AMOUNTS[Compartment.VESSEL_LUMEN] = (0.0, 0.02, 0.0)
_HE_AMOUNTS[Compartment.ELASTIC_LAMINA] = (0.02, 0.55, 0.0)
_HE_AMOUNTS[Compartment.INFILTRATE] = (0.10, 0.15, 0.0)

STAIN_PRESETS: dict[str, StainPreset] = {
    "pas": StainPreset(
        "pas",
        _BASE_STAINS,
        _BASE_AMOUNTS,
        "periodic acid-Schiff with haematoxylin (the demo's and KPIs' look): magenta basement "
        "membranes, brush borders and mesangium",
    ),
    "he": StainPreset(
        "he",
        _HE_STAINS,
        _HE_AMOUNTS,
        "haematoxylin and eosin: pink cytoplasm (tubule cells, smooth muscle), pale basement "
        "membranes, blue nuclei (used to pretrain SAM2 on something other than the task)",
    ),
}

# Probability that a candidate nucleus centred in a compartment is kept (nuclear density).
_NUCLEUS_KEEP = np.zeros(N_COMPARTMENTS)
_NUCLEUS_KEEP[
    [
        Compartment.INTERSTITIUM,
        Compartment.EPITHELIUM,
        Compartment.TUFT,
        Compartment.CAPSULE,
        Compartment.VESSEL_WALL,
        Compartment.BRUSH_BORDER,
        Compartment.INFILTRATE,
    ]
] = (
    0.04,
    0.45,
    0.95,
    0.25,
    0.5,
    0.0,
    0.95,
)
# Distal tubules and collecting ducts have smaller, more crowded cells than proximal tubules.
_EPITHELIUM_DENSITY = {0: 1.0, 1: 1.5, 2: 1.8, 3: 1.0}
_RBC_KEEP = np.zeros(N_COMPARTMENTS)
_RBC_KEEP[[Compartment.CAPILLARY_LUMEN, Compartment.VESSEL_LUMEN, Compartment.INTERSTITIUM]] = (
    0.9,
    0.9,
    0.02,
)


class LatticeNoise:
    """Smooth 3D value noise: a Gaussian-smoothed random lattice, trilinearly interpolated.

    Unit standard deviation, correlation length about ``cell_um``; evaluated at any points, so the
    texture is the same in every section at the same depth and changes smoothly with z.

    Args:
        rng: random generator.
        lo: lower corner (x, y, z) of the region in um.
        hi: upper corner.
        cell_um: lattice spacing.
    """

    def __init__(self, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, cell_um: float) -> None:
        self.lo = np.asarray(lo, dtype=np.float64) - 2 * cell_um
        self.cell = float(cell_um)
        shape = np.ceil((np.asarray(hi) - self.lo) / cell_um).astype(int) + 3
        lattice = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0, mode="wrap")
        self.lattice = (lattice / (lattice.std() + 1e-12)).astype(np.float32)

    def grid(self, xs: np.ndarray, ys: np.ndarray, z: float) -> np.ndarray:
        """Evaluate on the grid ``ys x xs`` (1-D coordinate arrays, um) at depth ``z``: ``[len(ys), len(xs)]``."""
        fz = (z - self.lo[2]) / self.cell
        iz = int(np.clip(np.floor(fz), 0, self.lattice.shape[2] - 2))
        wz = float(np.clip(fz - iz, 0.0, 1.0))
        plane = self.lattice[:, :, iz] * (1.0 - wz) + self.lattice[:, :, iz + 1] * wz  # [x, y]

        def axis(coords: np.ndarray, lo: float, size: int) -> tuple[np.ndarray, np.ndarray]:
            f = np.clip((np.asarray(coords) - lo) / self.cell, 0.0, size - 1.001)
            i = np.floor(f).astype(np.int64)
            return i, (f - i).astype(np.float32)

        ix, wx = axis(xs, self.lo[0], plane.shape[0])
        iy, wy = axis(ys, self.lo[1], plane.shape[1])
        cols = plane[ix] * (1.0 - wx)[:, None] + plane[ix + 1] * wx[:, None]  # [len(xs), y]
        out = cols[:, iy] * (1.0 - wy)[None, :] + cols[:, iy + 1] * wy[None, :]  # [len(xs), len(ys)]
        return np.ascontiguousarray(out.T)


@dataclass
class Glomerulus:
    """One glomerulus: an ellipsoid capsule with an off-centre tuft.

    Attributes:
        centre: (x, y, z) um.
        axes: semi-axes of the outer capsule, um.
        rotation: 3x3 rotation (columns = ellipsoid axes in the block frame).
        tuft_offset: tuft centre offset from ``centre``, um.
        bowman_um: width of Bowman's space (tuft semi-axes = capsule semi-axes minus this), um.
        capsule_ratio: inner surface of the capsule (start of the capsule wall), fraction of ``axes``.
    """

    centre: np.ndarray
    axes: np.ndarray
    rotation: np.ndarray
    tuft_offset: np.ndarray
    bowman_um: float
    capsule_ratio: float

    @property
    def bound(self) -> float:
        """Radius of a sphere enclosing the glomerulus."""
        return float(self.axes.max())


@dataclass
class TissueBlock:
    """A block of synthetic cortex (all lengths in um) and the per-case staining.

    Attributes:
        field_um: side of the square field (x and y in [0, field_um]).
        z_range: (z_min, z_max) of the sections.
        glomeruli: list of :class:`Glomerulus`.
        seg_a, seg_b: ``[S, 3]`` tube segment end points.
        seg_tube: ``[S]`` tube index of each segment.
        tube_radius, tube_lumen, tube_kind: per tube: outer radius, lumen radius fraction, kind.
        nuclei, nuclei_radius, nuclei_u: candidate nucleus centres ``[M, 3]``, radii and keep-draws.
        rbc, rbc_radius, rbc_u: candidate red cells.
        noise: named :class:`LatticeNoise` fields.
        stains: ``[3, 3]`` OD per unit of haematoxylin, PAS, red pigment for this case.
        amounts: ``[N_COMPARTMENTS, 3]`` stain amounts per compartment for this case.
        edge: tissue edge ``(nx, ny, offset)`` (tissue where ``x*nx + y*ny < offset``) or None.
        infiltrates: ``[K, 4]`` spheres ``(x, y, z, radius)`` of interstitial inflammation: crowded
            nuclei between tubules, the hard negative for "glomeruli are where nuclei are dense".
    """

    field_um: float
    z_range: tuple[float, float]
    glomeruli: list[Glomerulus]
    seg_a: np.ndarray
    seg_b: np.ndarray
    seg_tube: np.ndarray
    tube_radius: np.ndarray
    tube_lumen: np.ndarray
    tube_kind: np.ndarray
    nuclei: np.ndarray
    nuclei_radius: np.ndarray
    nuclei_u: np.ndarray
    rbc: np.ndarray
    rbc_radius: np.ndarray
    rbc_u: np.ndarray
    noise: dict[str, LatticeNoise] = field(default_factory=dict)
    stains: np.ndarray = field(default_factory=lambda: _BASE_STAINS.copy())
    amounts: np.ndarray = field(default_factory=lambda: _BASE_AMOUNTS.copy())
    edge: tuple[float, float, float] | None = None
    infiltrates: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


@dataclass
class SectionRender:
    """One rendered section before degradation.

    Attributes:
        amounts: float32 ``[3, H, W]`` stain amounts (haematoxylin, PAS, red pigment).
        mask: bool ``[H, W]`` glomerulus cross-section (capsule included) at pixel centres.
        compartments: uint8 ``[H, W]`` compartment codes.
    """

    amounts: np.ndarray
    mask: np.ndarray
    compartments: np.ndarray


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# Largest z half-extent of a glomerulus (radius 58 um x axis factor 1.15): with a constant density the
# centres must fill this much beyond the sectioned depth, or the first and last sections see fewer.
GLOMERULUS_REACH_UM = 58.0 * 1.15


def _place_glomeruli(
    rng: np.random.Generator,
    field_um: float,
    z_range: tuple[float, float],
    easy: bool = False,
    per_mm3: float | None = None,
) -> list[Glomerulus]:
    # easy: one to three glomeruli per block, centred within the sectioned depth (large profiles in
    # most sections, few thin polar caps) with a wider Bowman's space. The same random draws are
    # made in both modes, so only the values differ.
    # per_mm3 (the study's blocks): a Poisson count for the block's volume, centres anywhere in the
    # field and up to GLOMERULUS_REACH_UM beyond the sectioned depth, so the number of glomeruli per
    # unit volume, and with it the share of sections that cut one, does not depend on how far apart
    # the sections are.
    if per_mm3 is None:
        probs = [0.0, 0.4, 0.4, 0.2, 0.0] if easy else [0.06, 0.30, 0.32, 0.20, 0.12]
        count = int(rng.choice([0, 1, 2, 3, 4], p=probs))
        xy_range = (0.12, 0.88)
    else:
        depth = z_range[1] - z_range[0] + 2.0 * GLOMERULUS_REACH_UM
        count = int(rng.poisson(per_mm3 * field_um * field_um * depth * 1e-9))
        xy_range = (0.0, 1.0)
    placed: list[Glomerulus] = []
    for _ in range(count * 30):
        if len(placed) == count:
            break
        radius = rng.uniform(30.0, 58.0)
        axes = radius * rng.uniform(0.85, 1.15, size=3)
        # Centres may lie beyond the sectioned depth: such glomeruli appear or vanish along the stack.
        if per_mm3 is not None:
            margin = GLOMERULUS_REACH_UM
        elif easy:
            margin = -0.25 * min(radius, 0.5 * (z_range[1] - z_range[0]))
        else:
            margin = 0.35 * radius
        centre = np.array(
            [
                rng.uniform(*xy_range) * field_um,
                rng.uniform(*xy_range) * field_um,
                rng.uniform(z_range[0] - margin, z_range[1] + margin),
            ]
        )
        if any(np.linalg.norm(centre - g.centre) < 1.15 * (g.bound + axes.max()) for g in placed):
            continue
        placed.append(
            Glomerulus(
                centre=centre,
                axes=axes,
                rotation=_random_rotation(rng),
                tuft_offset=rng.normal(0.0, 0.05 * radius, size=3),
                bowman_um=float(rng.uniform(7.0, 11.0) if easy else rng.uniform(4.0, 8.0)),
                capsule_ratio=float(rng.uniform(0.95, 0.97)),
            )
        )
    return placed


def _inside_glomerulus(p: np.ndarray, glomeruli: list[Glomerulus], scale: float) -> bool:
    for g in glomeruli:
        q = (p - g.centre) @ g.rotation / g.axes
        if float(q @ q) < scale * scale:
            return True
    return False


def _grow_tubes(
    rng: np.random.Generator, field_um: float, z_range: tuple[float, float], glomeruli: list[Glomerulus]
) -> tuple[list[np.ndarray], list[float], list[float], list[int]]:
    """Random-walk tubes until their volume covers the block about 1.3 times (overlaps are shared)."""
    lo = np.array([-40.0, -40.0, z_range[0] - 30.0])
    hi = np.array([field_um + 40.0, field_um + 40.0, z_range[1] + 30.0])
    target = 2.0 * float(np.prod(hi - lo))
    paths, radii, lumens, kinds = [], [], [], []
    volume = 0.0
    n_arterioles = int(rng.integers(0, 3))
    while volume < target or n_arterioles > 0:
        is_artery = n_arterioles > 0
        if is_artery:
            n_arterioles -= 1
            kind, radius, lumen = TubeKind.ARTERIOLE, rng.uniform(11.0, 20.0), rng.uniform(0.35, 0.55)
        else:
            kind = int(
                rng.choice([TubeKind.PROXIMAL, TubeKind.DISTAL, TubeKind.COLLECTING], p=[0.6, 0.3, 0.1])
            )
            radius = rng.uniform(16.0, 24.0) if kind == TubeKind.PROXIMAL else rng.uniform(13.0, 19.0)
            lumen = rng.uniform(0.12, 0.25) if kind == TubeKind.PROXIMAL else rng.uniform(0.3, 0.5)
        step = 28.0
        point = rng.uniform(lo, hi)
        for _ in range(20):
            if not _inside_glomerulus(point, glomeruli, 1.1):
                break
            point = rng.uniform(lo, hi)
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        path = [point]
        for _ in range(int(rng.integers(5, 13))):
            for _attempt in range(6):
                turn = direction + rng.normal(0.0, 0.45, size=3)
                turn /= np.linalg.norm(turn)
                nxt = path[-1] + step * turn
                if not _inside_glomerulus(nxt, glomeruli, 1.0 + radius / 60.0):
                    break
            else:
                break
            direction = turn
            path.append(nxt)
            if np.any(nxt < lo - 60) or np.any(nxt > hi + 60):
                break
        if len(path) < 2:
            continue
        pts = np.array(path)
        paths.append(pts)
        radii.append(float(radius))
        lumens.append(float(lumen))
        kinds.append(kind)
        volume += np.pi * radius**2 * float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())
    return paths, radii, lumens, kinds


def _stain_variation(rng: np.random.Generator, preset: StainPreset) -> tuple[np.ndarray, np.ndarray]:
    """Per-case stain vectors and compartment amounts (what makes colour thresholding unreliable)."""
    stains = preset.stains * rng.uniform(0.85, 1.15, size=(3, 1))
    stains = stains + rng.normal(0.0, 0.05, size=(3, 3))  # hue shifts between staining runs
    stains = np.clip(stains, 0.05, None)
    amounts = preset.amounts.copy()
    amounts[:, 1] *= rng.uniform(0.85, 1.15)
    amounts[Compartment.TUFT] *= rng.uniform(0.8, 1.15)
    amounts[Compartment.EPITHELIUM] *= rng.uniform(0.8, 1.35)
    amounts[Compartment.BRUSH_BORDER] *= rng.uniform(0.7, 1.2)
    amounts[Compartment.VESSEL_WALL] *= rng.uniform(0.8, 1.3)
    amounts[Compartment.INTERSTITIUM] *= rng.uniform(0.7, 1.5)
    return stains, amounts


def make_tissue_block(
    rng: np.random.Generator,
    field_um: float,
    z_range: tuple[float, float],
    difficulty: str = "realistic",
    stain: str = "pas",
    glomeruli_per_mm3: float | None = None,
) -> TissueBlock:
    """Sample one case's tissue block.

    Args:
        rng: random generator (the block is a deterministic function of its state).
        field_um: side of the square field of view in um.
        z_range: (first, last) section depth in um.
        difficulty: ``"realistic"`` (all hard negatives: inflammatory infiltrates, arterioles, thin
            polar caps of glomeruli) or ``"easy"`` (no infiltrates or arterioles, glomeruli centred
            in the stack with a wider Bowman's space: learnable by a small model trained from
            scratch in minutes on a CPU, the bundle's demo set). Damage is the same in both.
        stain: a key of :data:`STAIN_PRESETS` (``"pas"``: the demo's look; ``"he"``: H&E). The
            random draws do not depend on it: one seed gives the same tissue in every stain.
        glomeruli_per_mm3: None (the default): one to four glomeruli per block whatever its depth.
            A number: a Poisson count of that density over the block's volume (the field times the
            sectioned depth plus :data:`GLOMERULUS_REACH_UM` on both sides), centres anywhere in the
            field, so the share of sections that cut a glomerulus does not depend on the spacing.

    Returns:
        The :class:`TissueBlock`.
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    if stain not in STAIN_PRESETS:
        raise ValueError(f"stain must be one of {sorted(STAIN_PRESETS)}, got {stain!r}")
    easy = difficulty == "easy"
    glomeruli = _place_glomeruli(rng, field_um, z_range, easy, glomeruli_per_mm3)
    paths, radii, lumens, kinds = _grow_tubes(rng, field_um, z_range, glomeruli)
    if easy:  # arterioles (round, ring-like hard negatives) drawn as proximal tubules
        kinds = [TubeKind.PROXIMAL if k == TubeKind.ARTERIOLE else k for k in kinds]
    seg_a = np.concatenate([p[:-1] for p in paths])
    seg_b = np.concatenate([p[1:] for p in paths])
    seg_tube = np.concatenate([np.full(len(p) - 1, i) for i, p in enumerate(paths)])

    lo = np.array([0.0, 0.0, z_range[0] - 6.0])
    hi = np.array([field_um, field_um, z_range[1] + 6.0])
    volume = float(np.prod(hi - lo))
    n_nuclei = rng.poisson(volume / 260.0)
    nuclei = rng.uniform(lo, hi, size=(n_nuclei, 3))
    nuclei_radius = rng.uniform(2.3, 3.4, size=n_nuclei)
    nuclei_u = rng.random(n_nuclei)
    n_rbc = rng.poisson(volume / 900.0)
    rbc = rng.uniform(lo, hi, size=(n_rbc, 3))

    noise_lo = np.array([0.0, 0.0, z_range[0] - 10.0])
    noise_hi = np.array([field_um, field_um, z_range[1] + 10.0])
    noise = {
        "capillary": LatticeNoise(rng, noise_lo, noise_hi, 4.5),
        "lobes": LatticeNoise(rng, noise_lo, noise_hi, 16.0),
        "fibres": LatticeNoise(rng, noise_lo, noise_hi, 6.0),
        "gaps": LatticeNoise(rng, noise_lo, noise_hi, 10.0),
        "shape": LatticeNoise(rng, noise_lo, noise_hi, 25.0),
        "stain": LatticeNoise(rng, noise_lo, noise_hi, 60.0),
    }
    stains, amounts = _stain_variation(rng, STAIN_PRESETS[stain])
    edge = None
    if rng.random() < 0.25:  # a tissue edge with glass beyond it, on one side of the field
        angle = rng.uniform(0, 2 * np.pi)
        nx, ny = np.cos(angle), np.sin(angle)
        centre_proj = 0.5 * field_um * (nx + ny)
        edge = (
            float(nx),
            float(ny),
            float(centre_proj + rng.uniform(0.3, 0.48) * field_um * (abs(nx) + abs(ny))),
        )
    n_infiltrates = int(rng.choice([0, 1, 2, 3], p=[0.25, 0.3, 0.25, 0.2])) * (not easy)
    infiltrates = np.column_stack(
        [
            rng.uniform(0.05, 0.95, size=(n_infiltrates, 2)) * field_um,
            rng.uniform(z_range[0] - 15.0, z_range[1] + 15.0, size=n_infiltrates),
            rng.uniform(22.0, 48.0, size=n_infiltrates),
        ]
    )
    # Inflammatory cells are packed more densely than the cells of any compartment: extra nuclei.
    extra = []
    for cx, cy, cz, r in infiltrates:
        count = rng.poisson(4.0 / 3.0 * np.pi * r**3 / 110.0)
        d = rng.standard_normal((count, 3))
        d *= (r * rng.random(count) ** (1.0 / 3.0) / np.linalg.norm(d, axis=1))[:, None]
        extra.append(d + np.array([cx, cy, cz]))
    if extra:
        extra_pts = np.concatenate(extra)
        nuclei = np.concatenate([nuclei, extra_pts])
        nuclei_radius = np.concatenate([nuclei_radius, rng.uniform(2.0, 2.8, size=len(extra_pts))])
        nuclei_u = np.concatenate([nuclei_u, 0.5 * rng.random(len(extra_pts))])
    return TissueBlock(
        field_um=float(field_um),
        z_range=(float(z_range[0]), float(z_range[1])),
        glomeruli=glomeruli,
        seg_a=seg_a,
        seg_b=seg_b,
        seg_tube=seg_tube.astype(np.int64),
        tube_radius=np.array(radii),
        tube_lumen=np.array(lumens),
        tube_kind=np.array(kinds, dtype=np.int64),
        nuclei=nuclei,
        nuclei_radius=nuclei_radius,
        nuclei_u=nuclei_u,
        rbc=rbc,
        rbc_radius=rng.uniform(2.2, 3.0, size=n_rbc),
        rbc_u=rng.random(n_rbc),
        noise=noise,
        stains=stains,
        amounts=amounts,
        edge=edge,
        infiltrates=infiltrates,
    )


def _tube_fields(
    block: TissueBlock, z: float, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: normalised distance to the nearest tube centre line, its tube id, and the normalised
    distance to the nearest OTHER tube (where two tubules touch, their walls meet).

    Each segment updates only the pixel box of its footprint (a padded all-segment vectorisation was
    measured slower: the boxes differ too much in size).
    """
    h, w = len(ys), len(xs)
    step = float(xs[1] - xs[0])
    far = np.float32(1e6)
    best = np.full((h, w), far, dtype=np.float32)
    second = np.full((h, w), far, dtype=np.float32)
    best_id = np.full((h, w), -1, dtype=np.int64)
    a, b = block.seg_a, block.seg_b
    radius = block.tube_radius[block.seg_tube]
    active = (np.minimum(a[:, 2], b[:, 2]) - radius <= z) & (np.maximum(a[:, 2], b[:, 2]) + radius >= z)
    x0 = np.clip(np.floor((np.minimum(a[:, 0], b[:, 0]) - radius) / step), 0, w).astype(np.int64)
    x1 = np.clip(np.ceil((np.maximum(a[:, 0], b[:, 0]) + radius) / step), 0, w).astype(np.int64)
    y0 = np.clip(np.floor((np.minimum(a[:, 1], b[:, 1]) - radius) / step), 0, h).astype(np.int64)
    y1 = np.clip(np.ceil((np.maximum(a[:, 1], b[:, 1]) + radius) / step), 0, h).astype(np.int64)
    active &= (x1 > x0) & (y1 > y0)
    v = (b - a).astype(np.float32)
    inv_vv = 1.0 / np.maximum((v * v).sum(1), 1e-6)
    inv_r = (1.0 / radius).astype(np.float32)
    xs32, ys32 = xs.astype(np.float32), ys.astype(np.float32)
    for s in np.flatnonzero(active):
        sx0, sx1, sy0, sy1 = x0[s], x1[s], y0[s], y1[s]
        vx, vy, vz = v[s]
        px = xs32[sx0:sx1][None, :] - a[s, 0]
        py = ys32[sy0:sy1][:, None] - a[s, 1]
        pz = np.float32(z - a[s, 2])
        t = np.clip((px * vx + py * vy + pz * vz) * inv_vv[s], 0.0, 1.0)
        d = np.sqrt((px - t * vx) ** 2 + (py - t * vy) ** 2 + (pz - t * vz) ** 2) * inv_r[s]
        tube = block.seg_tube[s]
        sub_best, sub_second, sub_id = (
            best[sy0:sy1, sx0:sx1],
            second[sy0:sy1, sx0:sx1],
            best_id[sy0:sy1, sx0:sx1],
        )
        same = sub_id == tube
        closer = (d < sub_best) & ~same
        np.copyto(
            sub_second, np.where(closer, sub_best, np.where(same, sub_second, np.minimum(sub_second, d)))
        )
        np.copyto(sub_best, np.where(same, np.minimum(sub_best, d), np.where(closer, d, sub_best)))
        np.copyto(sub_id, tube, where=closer)
    return best, best_id, second


def _glomerulus_fields(
    block: TissueBlock, z: float, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: normalised capsule radius (min over glomeruli; < 1 inside) and normalised tuft radius
    (< 1 inside the tuft)."""
    h, w = len(ys), len(xs)
    step = float(xs[1] - xs[0])
    rho = np.full((h, w), 1e6, dtype=np.float32)
    tuft = np.full((h, w), 1e6, dtype=np.float32)
    for g in block.glomeruli:
        if abs(z - g.centre[2]) > g.bound:
            continue
        x0, x1 = (int(np.clip(np.floor((g.centre[0] + sgn * g.bound) / step), 0, w)) for sgn in (-1, 1))
        y0, y1 = (int(np.clip(np.floor((g.centre[1] + sgn * g.bound) / step), 0, h)) for sgn in (-1, 1))
        x1, y1 = min(x1 + 1, w), min(y1 + 1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        sx, sy = xs[x0:x1], ys[y0:y1]
        gx, gy = np.meshgrid(sx, sy)
        p = np.stack([gx - g.centre[0], gy - g.centre[1], np.full_like(gx, z - g.centre[2])], axis=-1)
        # A gently irregular capsule (+-3 %), so glomeruli are not perfect ellipses.
        wobble = 1.0 + 0.03 * block.noise["shape"].grid(sx, sy, z)
        r_caps = np.sqrt((((p @ g.rotation) / g.axes) ** 2).sum(-1)) / wobble
        qt = (p - g.tuft_offset) @ g.rotation
        r_tuft = np.sqrt(((qt / (g.axes - g.bowman_um)) ** 2).sum(-1))
        r_tuft = r_tuft / (1.0 + 0.09 * block.noise["lobes"].grid(sx, sy, z))  # lobulated tuft
        r_tuft = np.maximum(r_tuft, r_caps / g.capsule_ratio)  # the tuft stays inside the capsule
        sub_rho, sub_tuft = rho[y0:y1, x0:x1], tuft[y0:y1, x0:x1]
        closer = r_caps < sub_rho
        np.copyto(sub_rho, r_caps.astype(np.float32), where=closer)
        np.copyto(sub_tuft, r_tuft.astype(np.float32), where=closer)
    return rho, tuft


def _stamp_spheres(
    centres: np.ndarray, radii: np.ndarray, keep: np.ndarray, z: float, step: float, size: int
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the section at ``z`` through the kept spheres."""
    cover = np.zeros(size * size, dtype=np.float32)
    dz = centres[:, 2] - z
    sel = np.flatnonzero(keep & (np.abs(dz) < radii))
    if sel.size == 0:
        return cover.reshape(size, size)
    profile = np.sqrt(radii[sel] ** 2 - dz[sel] ** 2) / step  # profile radius in pixels
    cx, cy = centres[sel, 0] / step - 0.5, centres[sel, 1] / step - 0.5  # pixel coordinates
    k = int(np.ceil(profile.max())) + 1
    off = np.arange(-k, k + 1)
    ox, oy = np.meshgrid(off, off)
    px = np.round(cx).astype(np.int64)[:, None] + ox.ravel()[None, :]
    py = np.round(cy).astype(np.int64)[:, None] + oy.ravel()[None, :]
    dist = np.hypot(px - cx[:, None], py - cy[:, None])
    value = np.clip(profile[:, None] - dist + 0.5, 0.0, 1.0).astype(np.float32)
    inside = (px >= 0) & (px < size) & (py >= 0) & (py < size) & (value > 0)
    np.maximum.at(cover, (py * size + px)[inside], value[inside])
    return cover.reshape(size, size)


def _smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    """Per-section 2D texture at scales below the section spacing (independent between sections)."""
    field_ = ndimage.gaussian_filter(
        rng.standard_normal((size, size)).astype(np.float32), sigma_px, mode="wrap"
    )
    return field_ / (field_.std() + 1e-6)


def render_section(block: TissueBlock, z: float, image_size: int, rng: np.random.Generator) -> SectionRender:
    """Render the clean section of ``block`` at depth ``z``.

    Args:
        block: the case's tissue.
        z: section depth in um.
        image_size: output side in pixels (the field is ``block.field_um`` wide whatever the size).
        rng: generator for the fine, section-specific texture.

    Returns:
        The :class:`SectionRender` (stain amounts, exact glomerulus mask, compartment map).
    """
    step = block.field_um / image_size
    xs = ((np.arange(image_size) + 0.5) * step).astype(np.float32)
    ys = xs
    comp = np.full((image_size, image_size), Compartment.INTERSTITIUM, dtype=np.uint8)
    fine_sigma = max(0.6, 1.2 / step)
    fine = _smooth_noise(rng, image_size, fine_sigma)

    # Tubules and arterioles.
    r_tube, tube_id, r_other = _tube_fields(block, z, xs, ys)
    in_tube = r_tube < 1.0
    tid = np.where(in_tube, tube_id, 0)
    kind = block.tube_kind[tid]
    radius = block.tube_radius[tid].astype(np.float32)
    lumen = block.tube_lumen[tid] * (1.0 + 0.12 * fine)
    px_norm = step / radius  # one pixel in normalised radius units
    is_artery = kind == TubeKind.ARTERIOLE
    comp[in_tube] = Compartment.EPITHELIUM
    comp[in_tube & (r_tube >= 1.0 - np.maximum(0.07, 0.9 * px_norm))] = Compartment.TUBULE_BM
    comp[in_tube & ((r_other - r_tube) * radius < max(1.5, 0.9 * step))] = (
        Compartment.TUBULE_BM
    )  # touching tubules
    comp[in_tube & (r_tube < lumen + 0.14) & (kind == TubeKind.PROXIMAL)] = Compartment.BRUSH_BORDER
    comp[in_tube & (r_tube < lumen)] = Compartment.TUBULE_LUMEN
    comp[in_tube & is_artery] = Compartment.VESSEL_WALL
    comp[in_tube & is_artery & (np.abs(r_tube - lumen) < np.maximum(0.05, 0.6 * px_norm))] = (
        Compartment.ELASTIC_LAMINA
    )
    comp[in_tube & is_artery & (r_tube < lumen)] = Compartment.VESSEL_LUMEN
    # Interstitial gaps (shrinkage artefacts) between structures.
    comp[(comp == Compartment.INTERSTITIUM) & (block.noise["gaps"].grid(xs, ys, z) > 1.5)] = Compartment.GLASS
    # Inflammatory infiltrates fill the interstitium inside irregular spheres.
    if len(block.infiltrates):
        ragged = 1.0 + 0.25 * block.noise["lobes"].grid(xs + 700.0, ys, z)
        for cx, cy, cz, r in block.infiltrates:
            if abs(z - cz) < r:
                profile = np.sqrt(r * r - (z - cz) ** 2)
                inside = np.hypot(xs[None, :] - cx, ys[:, None] - cy) < profile * ragged
                comp[inside & (comp == Compartment.INTERSTITIUM)] = Compartment.INFILTRATE

    # Glomeruli override everything they contain.
    rho, tuft = _glomerulus_fields(block, z, xs, ys)
    mask = rho < 1.0
    comp[mask] = Compartment.CAPSULE
    comp[mask & (rho < 1.0 - max(0.04, 0.9 * step / 45.0))] = Compartment.BOWMAN_SPACE
    in_tuft = mask & (tuft < 1.0)
    comp[in_tuft] = Compartment.TUFT
    capillary = block.noise["capillary"].grid(xs, ys, z) + 0.35 * fine
    comp[in_tuft & (capillary > 0.6)] = Compartment.CAPILLARY_LUMEN

    if block.edge is not None:  # a real tissue edge: no tissue, and no glomerulus, beyond it
        nx, ny, offset = block.edge
        wavy = offset + 12.0 * block.noise["shape"].grid(xs + 300.0, ys, z)
        outside = xs[None, :] * nx + ys[:, None] * ny > wavy
        comp[outside] = Compartment.GLASS
        mask &= ~outside

    # Stain amounts with textures.
    amounts = block.amounts[comp].astype(np.float32)  # [H, W, 3]
    texture = 1.0 + 0.2 * fine
    inter = comp == Compartment.INTERSTITIUM
    texture[inter] = np.clip(1.0 + 0.4 * block.noise["fibres"].grid(xs, ys, z) + 0.3 * fine, 0.2, None)[inter]
    # Capillary-loop basement membranes: the tuft is darkest next to the lumens.
    rim = np.exp(-(((capillary - 0.6) / 0.4) ** 2))
    texture = np.where(comp == Compartment.TUFT, 0.7 + 0.7 * rim + 0.1 * fine, texture)
    amounts *= texture[..., None]
    amounts *= (1.0 + 0.12 * block.noise["stain"].grid(xs, ys, z))[..., None]  # uneven staining

    # Nuclei and red cells, kept according to the compartment their centre falls in.
    def centre_comp(points: np.ndarray) -> np.ndarray:
        ix = np.clip((points[:, 0] / step).astype(np.int64), 0, image_size - 1)
        iy = np.clip((points[:, 1] / step).astype(np.int64), 0, image_size - 1)
        return comp[iy, ix]

    near = np.flatnonzero(np.abs(block.nuclei[:, 2] - z) < block.nuclei_radius)
    keep = np.zeros(len(block.nuclei), dtype=bool)
    near_comp = centre_comp(block.nuclei[near])
    prob = _NUCLEUS_KEEP[near_comp]
    # Tubular nuclei sit in the basal part of the epithelium, away from the lumen.
    ix = np.clip((block.nuclei[near, 0] / step).astype(np.int64), 0, image_size - 1)
    iy = np.clip((block.nuclei[near, 1] / step).astype(np.int64), 0, image_size - 1)
    r_at = r_tube[iy, ix]
    lumen_at = lumen[iy, ix]
    apical = (near_comp == Compartment.EPITHELIUM) & (r_at < lumen_at + 0.5 * (1.0 - lumen_at))
    prob = np.where(apical, 0.1 * prob, prob)
    density = np.vectorize(_EPITHELIUM_DENSITY.get)(kind[iy, ix]) if near.size else np.ones(0)
    prob = np.where(near_comp == Compartment.EPITHELIUM, prob * density, prob)
    keep[near] = block.nuclei_u[near] < prob
    cover = _stamp_spheres(block.nuclei, block.nuclei_radius, keep, z, step, image_size)
    chromatin = np.clip(1.0 + 0.3 * _smooth_noise(rng, image_size, 0.7), 0.4, None)
    amounts[..., 0] += cover * 1.0 * chromatin
    amounts[..., 1] = amounts[..., 1] * (1.0 - 0.5 * cover) + 0.1 * cover

    near = np.abs(block.rbc[:, 2] - z) < block.rbc_radius
    keep = np.zeros(len(block.rbc), dtype=bool)
    keep[near] = block.rbc_u[near] < _RBC_KEEP[centre_comp(block.rbc[near])]
    amounts[..., 2] += 0.75 * _stamp_spheres(block.rbc, block.rbc_radius, keep, z, step, image_size)
    amounts[comp == Compartment.GLASS] *= 0.05

    # Optics: a slight blur (about 0.8 um), which also anti-aliases the hard compartment edges.
    sigma = max(0.4, 0.8 / step)
    amounts = ndimage.gaussian_filter(amounts, (sigma, sigma, 0))
    return SectionRender(
        amounts=np.ascontiguousarray(amounts.transpose(2, 0, 1), dtype=np.float32),
        mask=mask,
        compartments=comp,
    )


def concentrations_to_rgb(amounts: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Beer-Lambert: RGB in [0, 1] from stain amounts ``[3, H, W]`` and stain ODs ``[3, 3]``.

    Args:
        amounts: float ``[3, H, W]`` (haematoxylin, PAS, red pigment).
        stains: ``[3, 3]`` optical density per unit of each stain (rows) in R, G, B (columns).

    Returns:
        float32 ``[H, W, 3]`` in [0, 1]; unstained glass is slightly off-white.
    """
    od = np.einsum("shw,sc->hwc", np.clip(amounts, 0.0, None), stains) + 0.035
    return np.exp(-od).astype(np.float32)
