"""Labels saved on regions of whole slides -> training patches at the network's working resolution.

MONAI Label's pathology clients (QuPath, DSA) save a slide's annotations as an ASAP XML label
(``labels/final/<image id>.xml``: ``<Annotation PartOfGroup="..."><Coordinates><Coordinate X Y>``, in
level-0 pixels). As in MONAI Label's pathology sample app (``lib/utils.py``: ``split_local_dataset``)
the annotated region is the bounding rectangle of the annotations, everything inside it that is not
annotated is background, and the region is cut into patches for training. Unlike the sample app,
which reads the region at level 0 in one piece, here:

* the patches are cut at the bundle's working resolution ``model_mpp_um`` (physical size is data):
  each patch is read on its own (:meth:`pathseqsam.wsi.reader.Slide.read_scaled`, from the coarsest
  adequate level, resampled by ``mpp_um / model_mpp_um``), so memory is one patch whatever the
  region's size, and the polygons are drawn at the same resolution;
* groups: ``glomerulus`` (any case), ASAP's default ``None`` or no group are glomeruli; ``region`` /
  ``roi`` rectangles, when present, are the annotated region instead of the polygons' bounding
  rectangle (so glass and tissue without glomeruli can be labelled as such); other groups are
  ignored (logged).

Each patch is a PNG image + PNG mask (0/1) pair; its datalist item carries ``mpp_um`` =
``model_mpp_um``, so the bundle's ``LoadSequenced`` reads it at its true pixel size.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pathseqsam.data.errors import SequenceDataError
from pathseqsam.wsi.reader import open_slide
from pathseqsam.wsi.tiles import tile_starts

__all__ = [
    "GLOMERULUS_GROUPS",
    "REGION_GROUPS",
    "SlideAnnotations",
    "read_asap_annotations",
    "slide_label_patches",
]

logger = logging.getLogger(__name__)

GLOMERULUS_GROUPS = ("glomerulus", "none", "")
"""ASAP groups read as glomeruli (lower case; ``None``/no group is ASAP's default)."""

REGION_GROUPS = ("region", "roi")
"""ASAP groups read as the annotated region (their bounding rectangle)."""

MAX_VERTICES = 1_000_000
"""Vertices one label file may hold in all (a larger file is not an annotation)."""


class _DoctypeFound(Exception):
    """A ``<!DOCTYPE`` in a label (its name is the message)."""


class _NoDoctypeBuilder(ET.TreeBuilder):
    """ElementTree's tree builder, stopping at the start of a document type declaration."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise _DoctypeFound(name)


@dataclass(frozen=True)
class SlideAnnotations:
    """The polygons of one slide label, in level-0 pixels.

    Attributes:
        glomeruli: ``[K, 2]`` (x, y) rings.
        regions: ``[K, 2]`` rings of the annotated region(s).
    """

    glomeruli: list[np.ndarray]
    regions: list[np.ndarray]

    def bounds(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)``: the regions' bounding rectangle, else the glomeruli's."""
        rings = self.regions or self.glomeruli
        points = np.concatenate(rings)
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)


def read_asap_annotations(path: str | os.PathLike) -> SlideAnnotations:
    """The glomerulus and region polygons of an ASAP XML label (MONAI Label's pathology format).

    Args:
        path: the label file.

    Returns:
        The polygons (level-0 pixels).

    Raises:
        SequenceDataError: not XML, a document type declaration (DTD), no glomerulus nor region
            polygon, a coordinate that is not a finite number, or more than :data:`MAX_VERTICES`
            vertices (the message names the file and the parse error).
    """
    path = Path(path)
    try:
        # expat reads no external entities; a DTD is refused outright (ASAP labels have none, and its
        # entity declarations are what an expansion bomb is built from, whatever expat's own limits)
        root = ET.parse(path, parser=ET.XMLParser(target=_NoDoctypeBuilder())).getroot()
    except _DoctypeFound as exc:
        raise SequenceDataError(
            f"{path}: not an ASAP XML label (document type declaration <!DOCTYPE {exc}>: ASAP labels have "
            "none, and DTDs and entity declarations are not read)"
        ) from exc
    except ET.ParseError as exc:
        raise SequenceDataError(f"{path}: not an ASAP XML label ({exc})") from exc
    glomeruli, regions, ignored, vertices = [], [], set(), 0
    for annotation in root.iter("Annotation"):
        group = (annotation.get("PartOfGroup") or "").strip().lower()
        points = []
        for c in annotation.iter("Coordinate"):
            try:
                xy = (float(c.get("X")), float(c.get("Y")))
            except (TypeError, ValueError) as exc:
                raise SequenceDataError(
                    f"{path}: Coordinate X={c.get('X')!r} Y={c.get('Y')!r}: expected numbers"
                ) from exc
            if not all(math.isfinite(v) for v in xy):
                raise SequenceDataError(f"{path}: Coordinate {xy}: expected finite numbers")
            points.append(xy)
        vertices += len(points)
        if vertices > MAX_VERTICES:
            raise SequenceDataError(f"{path}: more than {MAX_VERTICES} vertices: not an annotation file")
        if len(points) < 3 and not (group in REGION_GROUPS and len(points) >= 2):
            continue
        if group in REGION_GROUPS:
            regions.append(np.asarray(points))
        elif group in GLOMERULUS_GROUPS:
            glomeruli.append(np.asarray(points))
        else:
            ignored.add(group)
    if ignored:
        logger.info("%s: ignoring annotation groups %s (not glomeruli)", path.name, sorted(ignored))
    if not glomeruli and not regions:
        raise SequenceDataError(
            f"{path}: no polygon of group 'glomerulus' (or a 'region' rectangle): nothing to train on"
        )
    return SlideAnnotations(glomeruli, regions)


def slide_label_patches(
    slide_path: str | os.PathLike,
    label_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    model_mpp_um: float,
    patch_px: int,
    mpp_um: float | None = None,
    max_patches: int = 10_000,
) -> list[dict[str, Any]]:
    """Cut a slide's labelled region into training patches at ``model_mpp_um``.

    Args:
        slide_path: the slide (OpenSlide, or a tiled pyramidal TIFF).
        label_path: its ASAP XML label.
        out_dir: where the patch PNGs go (the caller owns the folder).
        model_mpp_um: the bundle's working resolution.
        patch_px: patch side in working pixels (the bundle's ``image_size``); smaller at the region's
            right/bottom edge when the region is smaller than one patch (training pads them).
        mpp_um: the slide's level-0 pixel size when its metadata has none.
        max_patches: refuse a region needing more patches than this.

    Returns:
        Datalist items ``{"image": [png], "label": [png], "mpp_um": model_mpp_um, "case"}``, row by row.

    Raises:
        SequenceDataError: a bad label, a region outside the slide, more than ``max_patches`` patches.
    """
    annotations = read_asap_annotations(label_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items: list[dict[str, Any]] = []
    with open_slide(slide_path, mpp_um) as slide:
        x0, y0, x1, y1 = annotations.bounds()
        x0, y0 = max(0.0, math.floor(x0)), max(0.0, math.floor(y0))
        x1, y1 = min(float(slide.width), math.ceil(x1) + 1.0), min(float(slide.height), math.ceil(y1) + 1.0)
        if x1 <= x0 or y1 <= y0:
            raise SequenceDataError(
                f"{label_path}: the annotated region ({x0:g}, {y0:g})-({x1:g}, {y1:g}) does not lie inside the "
                f"slide {Path(slide_path).name} ({slide.width}x{slide.height} px)"
            )
        step = model_mpp_um / slide.mpp_um  # level-0 pixels per working pixel
        width, height = max(1, round((x1 - x0) / step)), max(1, round((y1 - y0) / step))
        rows, cols = tile_starts(height, patch_px, patch_px), tile_starts(width, patch_px, patch_px)
        if len(rows) * len(cols) > max_patches:
            raise SequenceDataError(
                f"{label_path}: the annotated region is {width}x{height} px at {model_mpp_um:g} um/px, "
                f"{len(rows) * len(cols)} patches, more than {max_patches}"
            )
        stem = Path(slide_path).name.split(".")[0]
        for r in rows:
            for c in cols:
                ph, pw = min(patch_px, height - r), min(patch_px, width - c)
                px0, py0 = x0 + c * step, y0 + r * step  # the patch's level-0 top-left
                rgb = slide.read_scaled(px0, py0, pw * step, ph * step, pw, ph)
                mask = Image.new("L", (pw, ph), 0)
                draw = ImageDraw.Draw(mask)
                for ring in annotations.glomeruli:
                    # PIL fills pixels whose centres are inside; pixel (i, j) is centred at level-0
                    # (px0 + (i + 0.5) * step, py0 + (j + 0.5) * step)
                    pts = [((x - px0) / step - 0.5, (y - py0) / step - 0.5) for x, y in ring]
                    draw.polygon(pts, fill=1, outline=1)
                name = f"{stem}_{round(px0)}_{round(py0)}"
                image_file, label_file = out / f"{name}.png", out / f"{name}_label.png"
                Image.fromarray(rgb).save(image_file)
                mask.save(label_file)
                items.append(
                    {
                        "image": [str(image_file)],
                        "label": [str(label_file)],
                        "mpp_um": float(model_mpp_um),
                        "case": name,
                    }
                )
    logger.info(
        "%s: labelled region x %d-%d, y %d-%d (level-0 px) -> %d patches of %d px at %g um/px, %d glomeruli",
        Path(slide_path).name,
        x0,
        x1,
        y0,
        y1,
        len(items),
        patch_px,
        model_mpp_um,
        len(annotations.glomeruli),
    )
    return items
