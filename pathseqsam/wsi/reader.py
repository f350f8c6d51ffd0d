"""Whole-slide images read region by region, at a requested physical resolution.

A slide is never decoded whole: every read asks for one rectangle of one pyramid level.

* Pyramidal slides (SVS, NDPI, MRXS, SCN, tiled generic TIFF) go through MONAI's
  ``WSIReader(backend="openslide")`` (the ``openslide-python`` + ``openslide-bin`` wheels; no system
  library). MONAI's tifffile backend is not used: it decodes the whole level on every patch
  (MONAI issue 6513).
* TIFFs OpenSlide refuses (stripped TIFFs, such as some KPIs ``*_wsi.tiff``) are read by
  :class:`TiffSegmentSlide`, which decodes only the tiles or strips a region overlaps (tifffile's
  own segment decoder, no zarr).

Microns per pixel come from the slide (``openslide.mpp-x``, which OpenSlide derives from the Aperio
description or from TIFF resolution tags in centimetres or inches; for the tifffile path the same
tags), else from the caller's ``mpp_um``; without either the slide is refused.

:meth:`Slide.read_scaled` is the one read the pipeline needs: a level-0 rectangle resampled to a
given output size, read from the coarsest level that is still at least as fine as the output
(so a 2 um/px model reads a 0.25 um/px slide from its 4x or 8x level, not from level 0).

Memory does not grow with the slide: OpenSlide is asked for at most ``1024 x 1024`` pixels at a
time, and a region of more than ``4096 x 4096`` level pixels is read and resampled in pieces of about
``2048 x 2048`` (with a margin as wide as the resampling filter, so the pieces cover the same input
pixels one resize would; they differ from it by rounding only: at most 2 grey levels measured).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.resolution import tiff_tag_mpp

__all__ = [
    "Slide",
    "SlideError",
    "SlideLevel",
    "TiffSegmentSlide",
    "WSIReaderSlide",
    "open_slide",
]

_TIFF_SUFFIXES = (".tif", ".tiff", ".svs", ".btf", ".tf8", ".tf2")
_MPP_TOLERANCE = 1e-3  # a level whose mpp is within 0.1 % of the target counts as fine enough
# OpenSlide is asked for at most this many pixels per side: one call costs about 16 bytes per pixel
# (its ARGB buffer, PIL's RGBA image and its copy, MONAI's array), so a large region would cost GiBs
_READ_SIDE = 1024
# a region of up to this many level pixels is resized in one PIL call (about 7 bytes per pixel: the
# uint8 region and PIL's copy), which keeps the pixels earlier versions gave; a larger one (a slide
# without levels near the output's resolution) is read and resized in pieces of _PIECE_SIDE
_ONE_RESIZE_PX = 4096 * 4096
_PIECE_SIDE = 2048


class SlideError(SequenceDataError):
    """A slide that cannot be read, or lacks what the pipeline needs (microns per pixel)."""


@dataclass(frozen=True)
class SlideLevel:
    """One pyramid level: its size in pixels and its downsample factor from level 0."""

    width: int
    height: int
    downsample: float


class Slide:
    """A whole-slide image: pyramid levels, microns per pixel, region reads.

    Subclasses implement :meth:`read_level_region`; everything else is shared.

    Attributes:
        path: the slide file.
        levels: level 0 first, then coarser levels.
        mpp_um: microns per pixel of level 0.
        backend: ``"openslide"`` or ``"tifffile-segments"``.
    """

    backend = ""

    def __init__(self, path: Path, levels: list[SlideLevel], mpp_um: float) -> None:
        self.path = Path(path)
        self.levels = levels
        self.mpp_um = float(mpp_um)

    # ------------------------------------------------------------------ geometry
    @property
    def width(self) -> int:
        return self.levels[0].width

    @property
    def height(self) -> int:
        return self.levels[0].height

    @property
    def name(self) -> str:
        """The file name without its (last) suffix: ``a/b/12_345_wsi.tiff`` -> ``12_345_wsi``."""
        return self.path.name[: -len(self.path.suffix)] if self.path.suffix else self.path.name

    def level_mpp(self, level: int) -> float:
        return self.mpp_um * self.levels[level].downsample

    def best_level(self, target_mpp_um: float) -> int:
        """The coarsest level whose mpp is <= ``target_mpp_um`` (level 0 if none is)."""
        best = 0
        for i in range(len(self.levels)):
            if self.level_mpp(i) <= target_mpp_um * (1.0 + _MPP_TOLERANCE):
                if self.levels[i].downsample >= self.levels[best].downsample:
                    best = i
        return best

    # ------------------------------------------------------------------ reads
    def read_level_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB ``uint8 [height, width, 3]`` of ``level``; ``(x, y)`` is the top-left in LEVEL pixels.

        Parts outside the slide are white (background), as are transparent parts of a sparse slide.
        """
        raise NotImplementedError

    def read_scaled(
        self, x0: float, y0: float, width0: float, height0: float, out_width: int, out_height: int
    ) -> np.ndarray:
        """The level-0 rectangle ``(x0, y0, width0, height0)`` resampled to ``out_height x out_width``.

        Read from :meth:`best_level` for the output's mpp, then resampled with PIL's bilinear filter
        (antialiased when shrinking) over the exact sub-pixel box, so neighbouring reads tile.

        Args:
            x0: left edge in level-0 pixels (may be fractional or outside the slide).
            y0: top edge in level-0 pixels.
            width0: width in level-0 pixels.
            height0: height in level-0 pixels.
            out_width: output width in pixels.
            out_height: output height in pixels.

        Returns:
            RGB ``uint8 [out_height, out_width, 3]``.
        """
        out_mpp = self.mpp_um * width0 / out_width
        level = self.best_level(out_mpp)
        ds = self.levels[level].downsample
        lx0, ly0, lx1, ly1 = x0 / ds, y0 / ds, (x0 + width0) / ds, (y0 + height0) / ds
        ix0, iy0 = math.floor(lx0), math.floor(ly0)
        ix1, iy1 = max(math.ceil(lx1), ix0 + 1), max(math.ceil(ly1), iy0 + 1)
        rw, rh = ix1 - ix0, iy1 - iy0
        if (rw, rh) == (out_width, out_height) and (lx0, ly0) == (ix0, iy0):
            return self.read_level_region(level, ix0, iy0, rw, rh)
        box = (lx0 - ix0, ly0 - iy0, lx1 - ix0, ly1 - iy0)
        if rw * rh <= _ONE_RESIZE_PX:
            return _resize(self.read_level_region(level, ix0, iy0, rw, rh), box, out_width, out_height)
        # a large region: read and resample it piece by piece; each piece holds every level pixel
        # PIL's filter gives weight to for its output pixels, clipped to the region as one read
        # would clip it, so there are no seams; the pixels differ from one resize of the whole
        # region by rounding only (PIL takes the box in float32, and may pick the order of its two
        # passes by the image's shape): at most 2 grey levels measured
        piece_w, piece_h = self._piece_shape(level)
        out = np.empty((out_height, out_width, 3), dtype=np.uint8)
        rows = _filter_spans(box[1], box[3], out_height, rh, piece_h)
        cols = _filter_spans(box[0], box[2], out_width, rw, piece_w)
        sx, sy = (box[2] - box[0]) / out_width, (box[3] - box[1]) / out_height
        for oy0, oy1, ry0, ry1 in rows:
            for ox0, ox1, rx0, rx1 in cols:
                piece = self.read_level_region(level, ix0 + rx0, iy0 + ry0, rx1 - rx0, ry1 - ry0)
                # the outer edges are the region's own (not recomputed): the box never leaves the piece
                pbox = (
                    (box[0] if ox0 == 0 else box[0] + ox0 * sx) - rx0,
                    (box[1] if oy0 == 0 else box[1] + oy0 * sy) - ry0,
                    (box[2] if ox1 == out_width else box[0] + ox1 * sx) - rx0,
                    (box[3] if oy1 == out_height else box[1] + oy1 * sy) - ry0,
                )
                out[oy0:oy1, ox0:ox1] = _resize(piece, pbox, ox1 - ox0, oy1 - oy0)
                del piece  # before the next piece is read: one piece in memory at a time
        return out

    def _piece_shape(self, level: int) -> tuple[int, int]:
        """Width and height, in pixels of ``level``, of the pieces a large region is read in."""
        return _PIECE_SIDE, _PIECE_SIDE

    def read_overview(self, mpp_um: float, block: int = 1024) -> np.ndarray:
        """The whole slide at ``mpp_um`` (coarse: for tissue masks and thumbnails), read in blocks.

        Each block is one :meth:`read_scaled`, which reads a large region in pieces of level
        pixels: the memory a block needs does not grow with the slide or with the distance between
        ``mpp_um`` and the slide's coarsest level. ``block`` counts output pixels so that overviews
        keep the pixels earlier versions gave (a block's edges clip the filter).

        Args:
            mpp_um: output resolution; the output is ``ceil(size * mpp / mpp_um)`` pixels per axis.
            block: output pixels per block side (each block is one :meth:`read_scaled`).

        Returns:
            RGB ``uint8 [H, W, 3]``.
        """
        scale = self.mpp_um / mpp_um  # output pixels per level-0 pixel
        out_h, out_w = max(1, math.ceil(self.height * scale)), max(1, math.ceil(self.width * scale))
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for oy in range(0, out_h, block):
            for ox in range(0, out_w, block):
                bh, bw = min(block, out_h - oy), min(block, out_w - ox)
                out[oy : oy + bh, ox : ox + bw] = self.read_scaled(
                    ox / scale, oy / scale, bw / scale, bh / scale, bw, bh
                )
        return out

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, {self.width}x{self.height} px, "
            f"{self.mpp_um:.4g} um/px, {len(self.levels)} levels)"
        )


def _clip_region(
    x: int, y: int, width: int, height: int, level: SlideLevel
) -> tuple[int, int, int, int] | None:
    """The part of a level-pixel rectangle inside the level, as (x0, y0, x1, y1), or None."""
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, level.width), min(y + height, level.height)
    return None if x1 <= x0 or y1 <= y0 else (x0, y0, x1, y1)


def _resize(
    region: np.ndarray, box: tuple[float, float, float, float], width: int, height: int
) -> np.ndarray:
    """PIL's bilinear resize (antialiased when shrinking) of ``box`` of ``region`` to ``height x width``."""
    img = Image.fromarray(region).resize((width, height), Image.Resampling.BILINEAR, box=box)
    return np.asarray(img)


def _filter_spans(
    in0: float, in1: float, out_size: int, in_size: int, side: int
) -> list[tuple[int, int, int, int]]:
    """Split one axis of a resize into pieces of at most about ``side`` input pixels.

    The input pixels an output pixel's bilinear filter covers are computed as Pillow's
    ``precompute_coeffs`` does (centre ``in0 + (i + 0.5) * scale``, support ``max(scale, 1)``,
    clipped to ``[0, in_size)``), plus one pixel either side against rounding.

    Args:
        in0: start of the resized box on this axis, in input pixels.
        in1: end of the box.
        out_size: output pixels on this axis.
        in_size: input pixels on this axis (the whole region).
        side: the most input pixels a piece should hold (a piece holds at least one output
            pixel's filter, whatever ``side``).

    Returns:
        ``(out_start, out_stop, in_start, in_stop)`` per piece, covering ``[0, out_size)``.
    """
    scale = (in1 - in0) / out_size
    support = max(scale, 1.0)
    centre = in0 + (np.arange(out_size) + 0.5) * scale
    lo = np.clip((centre - support + 0.5).astype(np.int64) - 1, 0, in_size)  # int() truncates, as C
    hi = np.clip((centre + support + 0.5).astype(np.int64) + 1, 0, in_size)
    spans, o0 = [], 0
    while o0 < out_size:
        o1 = max(o0 + 1, int(np.searchsorted(hi, lo[o0] + side, side="right")))
        o1 = min(o1, out_size)
        spans.append((o0, o1, int(lo[o0]), int(hi[o1 - 1])))
        o0 = o1
    return spans


def _opaque_over_white() -> np.ndarray:
    """``table[alpha, value]``: a channel value with its alpha composited over white, as uint8.

    Built with the float32 arithmetic earlier versions applied to every pixel (value plus
    ``255 * (1 - alpha / 255)``, clipped, truncated), so integer lookups give the same bytes.
    """
    value = np.arange(256, dtype=np.float32)[None, :]
    alpha = np.arange(256, dtype=np.float32)[:, None] / 255.0
    return np.clip(value + 255.0 * (1.0 - alpha), 0, 255).astype(np.uint8)


_OVER_WHITE = _opaque_over_white()


def _composite_over_white(rgba: np.ndarray, out: np.ndarray) -> None:
    """Write ``rgba`` (``uint8 [h, w, 4]``, OpenSlide's alpha) over a white background into ``out``."""
    alpha = rgba[..., 3]
    if alpha.min() == 255:  # the common case, a fully opaque region: nothing to composite
        out[...] = rgba[..., :3]
        return
    index = alpha.astype(np.intp) << 8
    for c in range(3):
        out[..., c] = _OVER_WHITE.ravel()[index + rgba[..., c]]


class WSIReaderSlide(Slide):
    """A slide read with MONAI's ``WSIReader(backend="openslide")``."""

    backend = "openslide"

    def __init__(self, path: Path, mpp_um: float | None = None, require_mpp: bool = True) -> None:
        from monai.data import WSIReader

        self._reader = WSIReader(backend="openslide")
        self._wsi = self._reader.read(str(path))
        n = self._reader.get_level_count(self._wsi)
        levels = []
        for i in range(n):
            h, w = self._reader.get_size(self._wsi, i)
            levels.append(SlideLevel(int(w), int(h), float(self._reader.get_downsample_ratio(self._wsi, i))))
        props = self._wsi.properties
        found = props.get("openslide.mpp-x")
        super().__init__(
            path, levels, _choose_mpp(path, float(found) if found else None, mpp_um, require_mpp)
        )

    def read_level_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        lev = self.levels[level]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        clip = _clip_region(x, y, width, height, lev)
        if clip is None:
            return out
        x0, y0, x1, y1 = clip
        ds = lev.downsample
        for py in range(y0, y1, _READ_SIDE):  # bounded OpenSlide calls (see _READ_SIDE)
            for px in range(x0, x1, _READ_SIDE):
                ph, pw = min(_READ_SIDE, y1 - py), min(_READ_SIDE, x1 - px)
                # MONAI's get_data takes the location in level-0 pixels (row, col) and the size at the level
                try:
                    patch, _ = self._reader.get_data(
                        self._wsi,
                        location=(round(py * ds), round(px * ds)),
                        size=(ph, pw),
                        level=level,
                        mode="RGBA",
                    )
                except Exception as exc:  # OpenSlideError on a corrupt tile (the handle is then unusable)
                    raise SlideError(
                        f"{self.path}: region ({x0}, {y0}) {x1 - x0}x{y1 - y0} of level {level} cannot be "
                        f"read ({exc})"
                    ) from exc
                rgba = np.moveaxis(np.asarray(patch), 0, -1)  # MONAI returns channel first
                # transparent (no tile) parts become white background
                _composite_over_white(rgba, out[py - y : py - y + ph, px - x : px - x + pw])
        return out

    def close(self) -> None:
        self._wsi.close()


class TiffSegmentSlide(Slide):
    """A TIFF read tile by tile or strip by strip with tifffile, never a whole page.

    For TIFFs OpenSlide cannot open (stripped, non-pyramidal). Levels are the pages of the first
    series' pyramid (``series[0].levels``), or just its first page.
    """

    backend = "tifffile-segments"

    def __init__(self, path: Path, mpp_um: float | None = None, require_mpp: bool = True) -> None:
        import tifffile

        self._tif = tifffile.TiffFile(str(path))
        self._lock = threading.Lock()
        series = self._tif.series[0]
        self._pages = [lvl.keyframe for lvl in series.levels] if series.levels else [series.keyframe]
        page0 = self._pages[0]
        for i, page in enumerate(self._pages):
            if page.planarconfig != 1 or page.imagedepth != 1:
                raise SlideError(
                    f"{path}: page {i} is planar-separate or volumetric; expected a 2-D RGB or grey image"
                )
        levels = [
            SlideLevel(int(p.imagewidth), int(p.imagelength), page0.imagewidth / p.imagewidth)
            for p in self._pages
        ]
        super().__init__(path, levels, _choose_mpp(path, tiff_tag_mpp(page0), mpp_um, require_mpp))

    def read_level_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        clip = _clip_region(x, y, width, height, self.levels[level])
        if clip is None:
            return out
        x0, y0, x1, y1 = clip
        seg_h, seg_w = page.chunks[0], page.chunks[1]
        n_rows, n_cols = page.chunked[0], page.chunked[1]
        for r in range(y0 // seg_h, min(n_rows, (y1 - 1) // seg_h + 1)):
            for c in range(x0 // seg_w, min(n_cols, (x1 - 1) // seg_w + 1)):
                index = r * n_cols + c
                seg = self._decode(page, index)
                sy0, sx0 = r * seg_h, c * seg_w
                ay0, ax0 = max(y0, sy0), max(x0, sx0)
                ay1, ax1 = min(y1, sy0 + seg.shape[0]), min(x1, sx0 + seg.shape[1])
                out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = seg[ay0 - sy0 : ay1 - sy0, ax0 - sx0 : ax1 - sx0]
        return out

    def _piece_shape(self, level: int) -> tuple[int, int]:
        page, lev = self._pages[level], self.levels[level]
        if page.chunks[1] < lev.width:  # tiles, or strips narrower than the page: square pieces
            return _PIECE_SIDE, _PIECE_SIDE
        # strips span the page's width: square pieces would decode every strip once per column of
        # pieces, so pieces are bands of whole rows (about 16 M pixels, or one strip if taller)
        return lev.width, max(page.chunks[0], _ONE_RESIZE_PX // lev.width)

    def _decode(self, page, index: int) -> np.ndarray:
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:  # a sparse TIFF's missing tile: background
            return np.full((*page.chunks[:2], 3), 255, dtype=np.uint8)
        with self._lock:
            fh = self._tif.filehandle
            fh.seek(offset)
            data = fh.read(count)
        try:
            seg, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as exc:
            raise SlideError(f"{self.path}: segment {index} cannot be decoded ({exc})") from exc
        seg = np.asarray(seg)[0]  # [h, w, samples]
        return _as_rgb8(seg, self.path)

    def close(self) -> None:
        self._tif.close()


def _as_rgb8(seg: np.ndarray, path: Path) -> np.ndarray:
    if seg.ndim == 2:
        seg = seg[..., None]
    if seg.dtype != np.uint8:
        if seg.dtype == bool:
            seg = seg.astype(np.uint8) * 255
        else:
            raise SlideError(f"{path}: {seg.dtype} samples; expected an 8-bit RGB or grey slide")
    if seg.shape[-1] == 1:
        seg = np.repeat(seg, 3, axis=-1)
    return seg[..., :3]


def _choose_mpp(path: Path, found: float | None, given: float | None, required: bool = True) -> float:
    if found is not None and not (math.isfinite(found) and found > 0):
        found = None
    if given is not None:
        given = float(given)
        if not (math.isfinite(given) and given > 0):
            raise SlideError(f"{path}: mpp_um must be a positive number of micrometres, got {given}")
        if found is not None and abs(given - found) > 0.05 * found:
            warnings.warn(f"{path}: mpp_um={given} overrides the slide's own {found:.4g} um/px", stacklevel=3)
        return given
    if found is None and not required:
        return math.nan
    if found is None:
        raise SlideError(
            f"{path}: no microns per pixel in the slide's metadata (openslide.mpp-x, Aperio MPP or TIFF "
            "resolution tags in cm/inch); pass mpp_um (--mpp_um) with the scanner's resolution"
        )
    return found


def open_slide(path: str | os.PathLike, mpp_um: float | None = None, require_mpp: bool = True) -> Slide:
    """Open a whole-slide image for region reads.

    OpenSlide (through MONAI's ``WSIReader``) first; a TIFF OpenSlide refuses is read segment by
    segment with tifffile.

    Args:
        path: slide file (SVS, NDPI, MRXS, SCN, TIFF, ...).
        mpp_um: microns per pixel of level 0; required when the slide's metadata has none, and
            overrides it (with a warning when they differ by more than 5 %) when given.
        require_mpp: refuse a slide without microns per pixel; with False its ``mpp_um`` is NaN (for
            masks, whose geometry alone matters).

    Returns:
        A :class:`Slide`; close it (or use it as a context manager) when done.

    Raises:
        SlideError: missing, unreadable or corrupt file, or no microns per pixel; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{path}: no such slide file")
    try:
        import openslide
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise ImportError(
            "reading whole-slide images needs OpenSlide: pip install openslide-python openslide-bin"
        ) from exc
    try:
        return WSIReaderSlide(path, mpp_um, require_mpp)
    except SlideError:
        raise
    except (openslide.OpenSlideUnsupportedFormatError, openslide.OpenSlideError) as exc:
        if path.suffix.lower() not in _TIFF_SUFFIXES:
            raise SlideError(f"{path}: cannot be read as a whole-slide image ({exc})") from exc
        opened_by_openslide_error = exc
    try:
        return TiffSegmentSlide(path, mpp_um, require_mpp)
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(
            f"{path}: cannot be read as a whole-slide image (OpenSlide: {opened_by_openslide_error}; "
            f"tifffile: {exc})"
        ) from exc
