"""What slide inference writes: a pyramidal mask TIFF, QuPath GeoJSON, a thumbnail with contours.

* :func:`write_mask_pyramid`: ``mask.tif``, uint8 (0 / 255) in the slide's level-0 geometry like
  the KPIs masks, tiled 256 x 256, deflate, reduced levels (2x, 4x, ...) as top-level pages
  (OpenSlide's generic-TIFF reader ignores SubIFDs), resolution tags in centimetres; written tile by
  tile from the working-resolution mask on disk (nearest sampling), never whole;
* :func:`object_polygon` / :func:`geojson_feature`: one QuPath annotation per glomerulus
  (``"objectType": "annotation"``, a ``classification`` with name AND colour, which QuPath needs),
  coordinates in level-0 pixels;
* :func:`draw_contours`: the low-resolution slide with the mask's outlines.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage

from pathseqsam.wsi.stitch import DiskArray

__all__ = [
    "GLOMERULUS_CLASS",
    "draw_contours",
    "geojson_feature",
    "object_polygon",
    "ring_area",
    "sample_mask",
    "write_mask_pyramid",
]

GLOMERULUS_CLASS = {"name": "Glomerulus", "color": [0, 200, 0]}
_TILE = 256


def sample_mask(mask: DiskArray, scale: float, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """Nearest sampling of a working-resolution mask onto an output pixel grid.

    Output pixel ``(i, j)`` (from ``(y0, x0)``) has its centre at working coordinate
    ``(y0 + i + 0.5) * scale``; ``scale`` = working pixels per output pixel.

    Returns:
        ``uint8 [height, width]`` (0 outside the mask array).
    """
    rows = np.floor((y0 + np.arange(height) + 0.5) * scale).astype(np.int64)
    cols = np.floor((x0 + np.arange(width) + 0.5) * scale).astype(np.int64)
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    window = mask.read(r0, c0, r1, c1)
    return window[np.ix_(rows - r0, cols - c0)]


def _mask_tiles(mask: DiskArray, scale: float, level_w: int, level_h: int) -> Iterator[np.ndarray]:
    for ty in range(0, level_h, _TILE):
        for tx in range(0, level_w, _TILE):
            tile = np.where(sample_mask(mask, scale, ty, tx, _TILE, _TILE) > 0, 255, 0).astype(np.uint8)
            # pixels past the slide's edge (tiles are padded to 256) stay 0
            if ty + _TILE > level_h:
                tile[level_h - ty :] = 0
            if tx + _TILE > level_w:
                tile[:, level_w - tx :] = 0
            yield tile


def write_mask_pyramid(
    path: Path, mask: DiskArray, working_mpp_um: float, width: int, height: int, mpp_um: float
) -> None:
    """Write the working-resolution ``mask`` (0/1) as a pyramidal level-0-geometry TIFF (0/255).

    Args:
        path: output ``.tif`` (written in place: call through :func:`pathseqsam.atomic.atomic_write`).
        mask: the cleaned mask at ``working_mpp_um``.
        working_mpp_um: micrometres per mask pixel.
        width: slide level-0 width.
        height: slide level-0 height.
        mpp_um: slide level-0 micrometres per pixel.
    """
    import tifffile

    downsample = 1
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        while True:
            lw, lh = math.ceil(width / downsample), math.ceil(height / downsample)
            scale = downsample * mpp_um / working_mpp_um  # working pixels per level pixel
            res = 1e4 / (mpp_um * downsample)
            tif.write(
                _mask_tiles(mask, scale, lw, lh),
                shape=(lh, lw),
                dtype=np.uint8,
                tile=(_TILE, _TILE),
                compression="zlib",
                photometric="minisblack",
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if downsample == 1 else 1,
                metadata=None,
            )
            if max(lw, lh) <= 2 * _TILE:
                break
            downsample *= 2


def ring_area(ring: np.ndarray) -> float:
    """Area enclosed by a polygon ring (shoelace formula), in the square of its coordinates' unit.

    Args:
        ring: ``[K, 2]`` (x, y) vertices, closed or not (a repeated closing point adds nothing).

    Returns:
        The absolute area.
    """
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def object_polygon(component: np.ndarray) -> np.ndarray:
    """The outer outline of one 8-connected component, as a closed ``[K, 2]`` (x, y) ring.

    Traced with contourpy (matplotlib's contouring) at level 0.5 on the zero-padded mask, so the
    ring runs between the object's pixel centres and its background neighbours' (a 1-pixel object
    gives a diamond around its centre). Coordinates are pixel indices of ``component`` (pixel
    ``(r, c)`` has its centre at ``(x=c, y=r)``).

    Args:
        component: bool ``[h, w]`` with one connected object (holes are ignored: the outer ring).

    Returns:
        float64 ``[K, 2]``, first point repeated at the end.
    """
    import contourpy

    padded = np.pad(component.astype(np.float64), 1)
    gen = contourpy.contour_generator(z=padded, line_type=contourpy.LineType.Separate)
    lines = [np.asarray(line) for line in gen.lines(0.5)]
    if not lines:
        raise ValueError("empty component has no outline")

    ring = max(lines, key=ring_area) - 1.0  # undo the padding
    if not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    # drop points on straight runs (the pixel staircase keeps its corners)
    keep = np.ones(len(ring), dtype=bool)
    d1, d2 = ring[1:-1] - ring[:-2], ring[2:] - ring[1:-1]
    keep[1:-1] = np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) > 1e-9
    return ring[keep]


def geojson_feature(ring_level0: np.ndarray, area_um2: float, mean_probability: float, name: str) -> dict:
    """A QuPath annotation feature for one glomerulus.

    Args:
        ring_level0: closed ``[K, 2]`` (x, y) ring in level-0 pixels.
        area_um2: object area in square micrometres.
        mean_probability: mean network probability over the object.
        name: annotation name.

    Returns:
        A GeoJSON ``Feature`` dict.
    """
    coords = [[round(float(x), 2), round(float(y), 2)] for x, y in ring_level0]
    return {
        "type": "Feature",
        "id": str(uuid.uuid4()),
        "geometry": {"type": "Polygon", "coordinates": [coords]},
        "properties": {
            "objectType": "annotation",
            "name": name,
            "classification": dict(GLOMERULUS_CLASS),
            "measurements": {
                "Area um^2": round(float(area_um2), 2),
                "Mean probability": round(float(mean_probability), 4),
            },
        },
    }


def draw_contours(rgb: np.ndarray, mask: np.ndarray, color=(0, 200, 0), width: int = 1) -> np.ndarray:
    """``rgb`` with the outlines of ``mask`` (same size) painted in ``color``."""
    mask = mask.astype(bool)
    edge = mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)
    out = rgb.copy()
    out[edge] = color
    return out
