"""KPIs 2024 Task 2 (slide level): ``Task2_WSI_level/<class>/<id>_wsi.tiff`` + ``<id>_mask.tiff``.

Also pairs slides with ground-truth masks given as separate globs (``--slides`` / ``--masks``): a
mask belongs to the slide whose name, with ``_wsi`` dropped, equals the mask's name with ``_mask``
dropped (``12_345_wsi.tiff`` <-> ``12_345_mask.tiff``; ``a.svs`` <-> ``a_mask.tif``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pathseqsam.data.errors import SequenceDataError

__all__ = ["TASK2_FOLDER", "kpis_task2_pairs", "pair_slides_with_masks", "slide_key"]

TASK2_FOLDER = "Task2_WSI_level"
_SUFFIXES = (".tiff", ".tif")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *_SUFFIXES, ".svs", ".ndpi", ".mrxs", ".scn"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def slide_key(path: str | os.PathLike, role: str) -> str:
    """The name a slide and its mask share: the stem without a trailing ``_wsi`` / ``_mask``."""
    stem = _stem(Path(path))
    tag = "_wsi" if role == "slide" else "_mask"
    return stem[: -len(tag)] if stem.endswith(tag) else stem


def kpis_task2_pairs(root: str | os.PathLike) -> list[dict[str, str]]:
    """Slides and masks of a KPIs Task 2 tree.

    Args:
        root: the dataset root (holding ``Task2_WSI_level``) or the ``Task2_WSI_level`` folder itself
            (a split folder above the class folders is accepted: ``<split>/<class>/<id>_wsi.tiff``).

    Returns:
        ``[{"slide", "mask", "class", "id"}]`` sorted by class and id.

    Raises:
        SequenceDataError: no Task 2 slides under ``root``, or a slide without its mask (named).
    """
    root = Path(root)
    base = root / TASK2_FOLDER if (root / TASK2_FOLDER).is_dir() else root
    if not base.is_dir():
        raise SequenceDataError(f"{root}: not a folder (expected a KPIs root with {TASK2_FOLDER}/)")
    slides = sorted(p for p in base.rglob("*_wsi.tif*") if p.suffix.lower() in _SUFFIXES)
    if not slides:
        raise SequenceDataError(f"{base}: no <class>/<id>_wsi.tiff slides (KPIs Task 2 layout)")
    out = []
    for slide in slides:
        key = slide_key(slide, "slide")
        masks = [slide.with_name(f"{key}_mask{s}") for s in _SUFFIXES]
        mask = next((m for m in masks if m.is_file()), None)
        if mask is None:
            raise SequenceDataError(f"{slide}: no ground-truth mask beside it (expected {masks[0].name})")
        out.append({"slide": str(slide), "mask": str(mask), "class": slide.parent.name, "id": key})
    return sorted(out, key=lambda d: (d["class"], d["id"]))


def pair_slides_with_masks(
    slides: list[str | os.PathLike], masks: list[str | os.PathLike]
) -> list[dict[str, str]]:
    """Match each slide with the mask of the same name (see the module docstring).

    Raises:
        SequenceDataError: a slide without a mask, or two masks for one slide (named).
    """
    by_key: dict[str, Path] = {}
    for m in masks:
        key = slide_key(m, "mask")
        if key in by_key:
            raise SequenceDataError(f"{m}: a second mask for slide {key!r} (first: {by_key[key]})")
        by_key[key] = Path(m)
    out = []
    for s in slides:
        key = slide_key(s, "slide")
        if key not in by_key:
            raise SequenceDataError(f"{s}: no mask named {key}_mask.tif(f) among the masks given")
        out.append({"slide": str(s), "mask": str(by_key[key]), "id": key})
    return out
