"""Tissue detection and the tile grid of a whole slide, in micrometres.

* :func:`tissue_mask`: MONAI's ``ForegroundMask(hsv_threshold={"S": "otsu"})`` rule (HSV saturation above
  its Otsu threshold) in numpy/scipy (importing scikit-image, which ``ForegroundMask`` needs, made
  the 2-process runs abort at exit), plus an absolute saturation floor so a blank slide has no tissue
  (Otsu always splits something, even noise);
* :func:`tile_grid`: tiles of ``tile_um`` every ``stride_um``, covering the slide to its last pixel
  (the last tile per axis snapped to the edge, as the KPIs Task 2 script does; MONAI's
  ``SlidingPatchWSIDataset`` leaves the remainder uncovered), kept where the tissue mask has tissue;
* :func:`order_tiles`: the tiles as one sequence along a short path (serpentine rows, or the KPIs
  reader's nearest neighbour + 2-opt order).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pathseqsam.data.ordering import short_path_order

__all__ = ["TILE_ORDERS", "Tile", "order_tiles", "otsu_threshold", "tile_grid", "tile_starts", "tissue_mask"]

TILE_ORDERS = ("serpentine", "short_path")


@dataclass(frozen=True)
class Tile:
    """One tile: its top-left corner and size in micrometres from the slide's top-left corner."""

    x_um: float
    y_um: float
    size_um: float

    @property
    def centre_um(self) -> tuple[float, float]:
        return (self.x_um + self.size_um / 2.0, self.y_um + self.size_um / 2.0)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in [0, 1] (maximum between-class variance over a histogram)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1e-12)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1e-12)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def tissue_mask(
    rgb: np.ndarray, min_saturation: float = 0.05, min_area_px: int = 16, close_px: int = 2
) -> np.ndarray:
    """Tissue where HSV saturation exceeds its Otsu threshold (and ``min_saturation``).

    Args:
        rgb: low-resolution slide ``uint8 [H, W, 3]``.
        min_saturation: absolute floor on the threshold (saturation in [0, 1]): glass, white and
            black background are below it, so a slide with no tissue gives an empty mask.
        min_area_px: connected tissue pieces smaller than this (in mask pixels) are dust: dropped.
        close_px: binary closing radius that joins pale gaps inside a section.

    Returns:
        bool ``[H, W]``.
    """
    rgb = np.asarray(rgb, dtype=np.float32) / 255.0
    cmax, cmin = rgb.max(axis=-1), rgb.min(axis=-1)
    sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)
    threshold = max(otsu_threshold(sat), min_saturation) if sat.max() > min_saturation else math.inf
    mask = sat > threshold
    if not mask.any():
        return mask
    if close_px > 0:
        mask = ndimage.binary_closing(mask, structure=np.ones((3, 3), bool), iterations=close_px)
    labels, n = ndimage.label(mask)
    if n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        keep = areas >= min_area_px
        keep[0] = False
        mask = keep[labels]
    return mask


def tile_starts(extent: float, tile: float, stride: float) -> list[float]:
    """Tile starts along one axis: every ``stride``, the last snapped so the tile ends at the edge.

    Any one unit for the three (micrometres for slide tiles, pixels for label patches); with integer
    arguments the starts are integers.

    Args:
        extent: length of the axis.
        tile: tile length.
        stride: distance between tile starts.

    Returns:
        ``[0]`` when one tile covers the axis, else the starts in increasing order.
    """
    if extent <= tile:
        return [0 * stride]
    n = math.floor((extent - tile) / stride + 1e-9) + 1
    starts = [i * stride for i in range(n)]
    if starts[-1] + tile < extent - 1e-6:
        starts.append(extent - tile)
    return starts


def tile_grid(
    width_um: float,
    height_um: float,
    tile_um: float,
    stride_um: float,
    tissue: np.ndarray | None = None,
    tissue_mpp_um: float | None = None,
    min_tissue_fraction: float = 0.0,
) -> list[Tile]:
    """Tiles covering the slide, kept where there is tissue.

    Args:
        width_um: slide width in micrometres.
        height_um: slide height in micrometres.
        tile_um: tile side in micrometres.
        stride_um: distance between neighbouring tile starts (``tile_um / 2`` = 50 % overlap).
        tissue: optional tissue mask (bool ``[h, w]``) of the whole slide at ``tissue_mpp_um``.
        tissue_mpp_um: micrometres per pixel of ``tissue``.
        min_tissue_fraction: keep a tile when more than this fraction of its mask pixels is tissue
            (0: any tissue pixel).

    Returns:
        Tiles in row-major order (rows top to bottom, left to right).
    """
    if not (tile_um > 0 and 0 < stride_um <= tile_um):
        raise ValueError(f"need tile_um > 0 and 0 < stride_um <= tile_um; got {tile_um}, {stride_um}")
    if tissue is not None and not tissue_mpp_um:
        raise ValueError("tissue_mpp_um is required with a tissue mask")
    tiles = []
    for y in tile_starts(height_um, tile_um, stride_um):
        for x in tile_starts(width_um, tile_um, stride_um):
            if tissue is not None:
                r0, c0 = int(y / tissue_mpp_um), int(x / tissue_mpp_um)
                r1 = max(r0 + 1, math.ceil((y + tile_um) / tissue_mpp_um))
                c1 = max(c0 + 1, math.ceil((x + tile_um) / tissue_mpp_um))
                window = tissue[r0:r1, c0:c1]
                if window.size == 0 or window.mean() <= min_tissue_fraction or not window.any():
                    continue
            tiles.append(Tile(float(x), float(y), float(tile_um)))
    return tiles


def order_tiles(tiles: list[Tile], order: str = "serpentine", max_short_path: int = 4000) -> list[Tile]:
    """The tiles as one sequence whose consecutive tiles are neighbours.

    Args:
        tiles: tiles (any order).
        order: ``"serpentine"`` (rows top to bottom, alternating left-right and right-left: every
            step is one stride within a row) or ``"short_path"`` (greedy nearest neighbour + 2-opt,
            :func:`pathseqsam.data.ordering.short_path_order`; O(N^2) memory, for up to a few thousand tiles).
        max_short_path: above this many tiles ``"short_path"`` falls back to ``"serpentine"`` (with a
            warning): 4000 tiles hold a 128 MB distance matrix.

    Returns:
        The reordered tiles.
    """
    if order not in TILE_ORDERS:
        raise ValueError(f"tile order must be one of {TILE_ORDERS}, got {order!r}")
    if len(tiles) <= 1:
        return list(tiles)
    if order == "short_path":
        if len(tiles) > max_short_path:
            # the 2-opt search holds an N x N distance matrix: memory would grow with the slide
            warnings.warn(
                f"{len(tiles)} tiles: more than max_short_path={max_short_path} for the short-path order "
                "(O(N^2) memory); using the serpentine order",
                stacklevel=2,
            )
        else:
            centres = np.array([t.centre_um for t in tiles])
            return [tiles[i] for i in short_path_order(centres)]
    rows: dict[float, list[Tile]] = {}
    for t in tiles:
        rows.setdefault(t.y_um, []).append(t)
    out: list[Tile] = []
    for i, y in enumerate(sorted(rows)):
        out.extend(sorted(rows[y], key=lambda t: t.x_um, reverse=bool(i % 2)))
    return out
