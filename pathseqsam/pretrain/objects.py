"""Instance masks of every structure the synthetic tissue model draws, and their tracks through a stack.

SAM2 is pretrained to segment whatever it is prompted on; here the "whatever" is every structure of
:mod:`pathseqsam.synthetic.tissue`, read off the rendered compartment map
(:class:`~pathseqsam.synthetic.tissue.Compartment` per pixel): an instance is a connected component
of a structure's compartments. A prompted instance is followed to the next section by the component
of the same structure that overlaps it most (sections are a few micrometres apart, so a structure
moves little); when nothing overlaps enough it has left the stack and its later masks are empty
(SAM2's "no object" case, which trains the object-score head).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pathseqsam.synthetic.tissue import Compartment

__all__ = ["STRUCTURES", "Instance", "find_instances", "structure_masks", "track_instance"]

# structure name -> compartments it is made of. Parts (tuft, tubule lumen) are objects too, as SAM's
# data has parts and wholes. Tubules touching each other are separated by their basement membrane
# (TUBULE_BM, the wall they share), so a tubule is a component of its inside, grown by one pixel
# into its own wall.
STRUCTURES: dict[str, tuple[Compartment, ...]] = {
    "glomerulus": (
        Compartment.CAPSULE,
        Compartment.BOWMAN_SPACE,
        Compartment.TUFT,
        Compartment.CAPILLARY_LUMEN,
    ),
    "glomerular tuft": (Compartment.TUFT, Compartment.CAPILLARY_LUMEN),
    "tubule": (Compartment.EPITHELIUM, Compartment.BRUSH_BORDER, Compartment.TUBULE_LUMEN),
    "tubule lumen": (Compartment.TUBULE_LUMEN,),
    "arteriole": (Compartment.VESSEL_WALL, Compartment.VESSEL_LUMEN, Compartment.ELASTIC_LAMINA),
    "infiltrate": (Compartment.INFILTRATE,),
}
_GROW_INTO = {"tubule": (Compartment.TUBULE_BM,)}


@dataclass
class Instance:
    """One instance in one section.

    Attributes:
        structure: a key of :data:`STRUCTURES`.
        mask: bool ``[H, W]``.
    """

    structure: str
    mask: np.ndarray


def _components(comp: np.ndarray, structure: str, min_area: int) -> list[np.ndarray]:
    inside = np.isin(comp, STRUCTURES[structure])
    labels, n = ndimage.label(inside)
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    grow = np.isin(comp, _GROW_INTO[structure]) if structure in _GROW_INTO else None
    out = []
    for k in np.flatnonzero(areas[1:] >= min_area) + 1:
        mask = labels == k
        if grow is not None:
            mask = mask | (ndimage.binary_dilation(mask) & grow)
        out.append(mask)
    return out


def find_instances(comp: np.ndarray, min_area: int = 64) -> list[Instance]:
    """All instances of every structure in one section.

    Args:
        comp: uint8 ``[H, W]`` compartment map (``SectionRender.compartments``).
        min_area: smallest instance in pixels (smaller cross-sections are skipped as prompts).

    Returns:
        Instances in :data:`STRUCTURES` order, then in scan order of their first pixel.
    """
    return [Instance(s, m) for s in STRUCTURES for m in _components(comp, s, min_area)]


def track_instance(
    first: Instance, comps: list[np.ndarray], min_iou: float = 0.2, min_area: int = 16
) -> np.ndarray:
    """Follow an instance from the first section through the next ones.

    Args:
        first: the instance in section 0.
        comps: compartment maps of sections ``0..T-1``.
        min_iou: smallest IoU with the previous section's mask for a component to continue the track.
        min_area: smallest component considered in later sections.

    Returns:
        bool ``[T, H, W]``: ``first.mask`` then, per section, the best-overlapping component of the same
        structure (all False once the track is lost).
    """
    masks = [first.mask]
    prev: np.ndarray | None = first.mask
    for comp in comps[1:]:
        best, best_iou = None, min_iou
        if prev is not None:
            for cand in _components(comp, first.structure, min_area):
                inter = np.count_nonzero(cand & prev)
                if inter == 0:
                    continue
                iou = inter / np.count_nonzero(cand | prev)
                if iou > best_iou:
                    best, best_iou = cand, iou
        prev = best
        masks.append(best if best is not None else np.zeros_like(first.mask))
    return np.stack(masks)


def structure_masks(structure: str, comps: list[np.ndarray], min_area: int = 16) -> np.ndarray:
    """Every instance of one structure in each section, as one object (e.g. "all tubules").

    SAM's data has objects made of several parts; a mask prompt of all instances of a kind, followed
    through the stack, teaches the memory to carry a multi-part object, not only a single blob.

    Args:
        structure: a key of :data:`STRUCTURES`.
        comps: compartment maps of sections ``0..T-1``.
        min_area: smallest component kept in each section.

    Returns:
        bool ``[T, H, W]``: the union of the structure's components per section.
    """
    out = []
    for comp in comps:
        parts = _components(comp, structure, min_area)
        out.append(np.logical_or.reduce(parts) if parts else np.zeros(comp.shape, dtype=bool))
    return np.stack(out)
