"""Regions of pyramidal whole-slide images for MONAI Label's pathology clients (QuPath, DSA).

A pathology request names a region with ``location`` ``[x, y]`` (top-left, in LEVEL-0 pixels, the
clients' convention), ``size`` ``[width, height]`` (in pixels of the requested ``level``) and
``level`` (any level the slide has). :class:`SlideRegiond` reads only that rectangle of that level
through :mod:`pathseqsam.wsi.reader` (OpenSlide; a whole level is never decoded), and hands the
bundle's preprocessing a one-slice sequence at the level's own pixel grid, with the level's microns
per pixel (from the slide's metadata) as ``mpp_um``: the bundle's ``LoadSequenced`` then resamples it
to ``model_mpp_um`` exactly as it resamples a 2D patch, and its postprocessing brings the prediction
back to the level's grid. The mask returned covers the region at the requested level; its contours
(:func:`mask_contours`) are given in level-0 pixels.

Before anything is read the region is checked against the slide (it must lie inside the level) and
against the server's pixel budget (``--conf max_megapixels``), counted both at the requested level
and at the working resolution (a coarse level upsampled to a fine model is as much work as a fine
level): a larger region answers HTTP 413.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathseqsam.label.requests.options import RequestRefused, RequestTooLarge
from pathseqsam.label.requests.region import Region
from pathseqsam.wsi.reader import open_slide

__all__ = [
    "SLIDE_SUFFIXES",
    "SlideRegion",
    "SlideRegiond",
    "is_pyramidal_slide",
    "mask_contours",
    "slide_region",
]

SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
"""Vendor whole-slide formats: always read as slides."""

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf")


def is_pyramidal_slide(path: str | os.PathLike) -> bool:
    """True for a file OpenSlide reads as a whole-slide image with more than one level (or a vendor format).

    TIFF stacks (OME-TIFF, ImageJ) and single-level TIFFs are not slides: they stay sequences.
    """
    name = str(path).lower()
    if name.endswith(SLIDE_SUFFIXES):
        return True
    if not name.endswith(_TIFF_SUFFIXES) or not Path(path).is_file():
        return False
    import openslide

    try:
        if openslide.OpenSlide.detect_format(str(path)) is None:
            return False
        with openslide.OpenSlide(str(path)) as slide:
            return int(slide.level_count) > 1
    except openslide.OpenSlideError:
        return False


@dataclass(frozen=True)
class SlideRegion:
    """A checked region of a slide: level-0 top-left, size at ``level``, and the level's geometry."""

    x: int
    y: int
    width: int
    height: int
    level: int
    downsample: float
    level_x: int
    level_y: int
    mpp_um: float

    def level0(self) -> Region:
        """The region in level-0 pixels (size scaled by the level's downsample)."""
        return Region(
            self.x, self.y, round(self.width * self.downsample), round(self.height * self.downsample)
        )


def slide_region(
    request: Mapping[str, Any], slide: Any, model_mpp_um: float, max_pixels: int | None
) -> SlideRegion:
    """The region a (cleaned) request addresses on ``slide``, checked before anything is read.

    Args:
        request: ``location`` ``[x, y]`` (level 0), ``size`` ``[w, h]`` (at ``level``; absent or
            ``[0, 0]``: the whole level), ``level`` (default 0).
        slide: an open :class:`pathseqsam.wsi.reader.Slide`.
        model_mpp_um: the bundle's working resolution.
        max_pixels: pixel budget of one request, or None.

    Returns:
        The :class:`SlideRegion`.

    Raises:
        RequestRefused: a level the slide does not have, or a region not inside the slide (400; the
            message names the field and the slide's size); RequestTooLarge: above the budget (413).
    """
    level = int(request.get("level") or 0)
    n = len(slide.levels)
    if not 0 <= level < n:
        raise RequestRefused(
            f"request 'level' = {level}: the slide {slide.path.name} has levels 0..{n - 1} "
            f"(downsamples {[round(lv.downsample, 3) for lv in slide.levels]})"
        )
    lev = slide.levels[level]
    ds = float(lev.downsample)
    x, y = (int(v) for v in (request.get("location") or [0, 0]))
    size = request.get("size")
    whole = size is None or not any(size)
    w, h = (lev.width, lev.height) if whole else (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise RequestRefused(f"request 'size' = {list(size)}: expected a positive [width, height]")
    # the level-0 location in the level's pixels; the region must lie inside that level
    lx, ly = round(x / ds), round(y / ds)
    if x >= slide.width or y >= slide.height or lx + w > lev.width or ly + h > lev.height:
        raise RequestRefused(
            f"request region 'location' {[x, y]} (level-0 pixels) 'size' {[w, h]} (level {level} pixels) "
            f"does not lie inside the slide {slide.path.name}: level {level} is {lev.width}x{lev.height} px "
            f"(level 0 {slide.width}x{slide.height} px, downsample {ds:g}); expected "
            "location / downsample + size <= the level's size"
        )
    mpp = slide.level_mpp(level)
    if max_pixels is not None:
        scale = mpp / model_mpp_um
        working = math.ceil(w * scale) * math.ceil(h * scale)
        pixels = max(w * h, working)
        if pixels > max_pixels:
            raise RequestTooLarge(
                f"request 'size' {[w, h]} at level {level}: {w * h / 1e6:.1f} megapixels "
                f"({working / 1e6:.1f} at the model's {model_mpp_um:g} um/px), more than the server's "
                f"limit of {max_pixels / 1e6:g} per request (--conf max_megapixels); request a smaller "
                "region or a coarser level"
            )
    return SlideRegion(x, y, w, h, level, ds, lx, ly, mpp)


class SlideRegiond:
    """Replace the request's slide path by its region, as the bundle's loader takes a sequence.

    Output keys: ``image`` (a one-element list holding the region, RGB ``uint8 [H, W, 3]`` at the
    requested level, which ``LoadSequenced`` decodes like a 2D patch), ``mpp_um`` (the level's),
    ``region`` (a :class:`~pathseqsam.label.requests.region.Region` in level-0 pixels, for the prompts),
    ``slide_region`` (the :class:`SlideRegion`, for the writer) and ``case``.

    Args:
        model_mpp_um: the bundle's working resolution (for the pixel budget).
        max_pixels: pixel budget of one request.
        key: the image key (a slide path).
    """

    def __init__(self, model_mpp_um: float, max_pixels: int | None, key: str = "image") -> None:
        self.model_mpp_um = float(model_mpp_um)
        self.max_pixels = max_pixels
        self.key = key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        path = Path(d[self.key])
        with open_slide(path) as slide:
            region = slide_region(d, slide, self.model_mpp_um, self.max_pixels)
            rgb = slide.read_level_region(
                region.level, region.level_x, region.level_y, region.width, region.height
            )
        d[self.key] = [rgb]
        d["mpp_um"] = region.mpp_um
        d["region"] = region.level0()
        d["slide_region"] = region
        d["case"] = path.name.split(".")[0]
        return d


def mask_contours(mask: np.ndarray, region: SlideRegion, tolerance: float = 0.5) -> list[list[list[float]]]:
    """Outlines of the objects of a region's mask, in level-0 pixels.

    Args:
        mask: ``[H, W]`` binary mask at the region's level.
        region: the region it covers.
        tolerance: polygon simplification in level pixels.

    Returns:
        One closed polygon ``[[x, y], ...]`` per outline (level-0 pixel coordinates).
    """
    try:
        from skimage.measure import approximate_polygon, find_contours
    except ImportError as exc:  # pragma: no cover - the label extra (monailabel) installs scikit-image
        raise ImportError("slide region outlines need scikit-image: pip install scikit-image") from exc

    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)  # objects touching the border stay closed
    out = []
    for contour in find_contours(padded, 0.5):
        poly = approximate_polygon(contour, tolerance) - 1.0  # (row, col) in the region's level pixels
        xs = region.x + (poly[:, 1] + 0.5) * region.downsample
        ys = region.y + (poly[:, 0] + 0.5) * region.downsample
        out.append([[round(float(a), 1), round(float(b), 1)] for a, b in zip(xs, ys)])
    return out
