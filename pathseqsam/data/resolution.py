"""Pixel size (micrometres per pixel) of an input image, from the file or from the datalist.

Physical size is data: every input carries its ``mpp_um`` and the network works at one resolution
(the bundle's ``model_mpp_um``), so everything in between is resampled. Where the pixel size comes
from, in order:

1. the datalist item's ``mpp_um`` field (KPIs reader: per class; the synthetic generator: exact);
2. the file's own metadata:

   * OME-TIFF: ``Pixels PhysicalSizeX`` (with ``PhysicalSizeXUnit``, default um);
   * Aperio SVS / TIFF: ``MPP = 0.2520`` in the image description;
   * other TIFF: the resolution tags in centimetres, millimetres, micrometres or inches (ImageJ:
     ResolutionUnit NONE with its own ``unit``). Unitless tags, and 72 or 96 pixels per inch (the
     default of most image writers, which says nothing about a microscope), count as missing;
   * NIfTI: ``pixdim[1]`` in the header's spatial unit (unknown units count as missing);
   * PNG, JPEG, BMP: nothing is read (their DPI fields are screen settings);

3. the caller's fallback (the bundle's ``mpp_um`` setting: ``--mpp_um X`` on the command line,
   ``--conf mpp_um X`` in MONAI Label).

None of these -> :class:`~pathseqsam.data.errors.SequenceDataError` naming the file and the three
ways to give it (:data:`MPP_HINT`).
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from pathseqsam.data.errors import SequenceDataError

__all__ = [
    "LENGTH_UNIT_UM",
    "MPP_HINT",
    "check_mpp_um",
    "read_pixel_size_um",
    "resolve_mpp_um",
    "tiff_tag_mpp",
    "tiff_tag_spacing_um",
]

MPP_HINT = (
    "give the pixel size in micrometres: a 'mpp_um' field in the datalist item, '--mpp_um <um per px>' "
    "on the bundle command line (MONAI Label: '--conf mpp_um <um per px>'), or resolution metadata in "
    "the file (OME PhysicalSizeX, TIFF resolution tags in cm/inch, NIfTI pixdim with units)"
)

# Length units in file metadata (OME, ImageJ, NIfTI) -> micrometres; the one table for stacks and images.
LENGTH_UNIT_UM = {
    "um": 1.0,
    "µm": 1.0,
    "\u03bcm": 1.0,  # Greek mu instead of the micro sign
    "\\u00b5m": 1.0,  # an escaped micro sign written literally by some writers
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "meter": 1e6,
}
# TIFF ResolutionUnit -> micrometres per unit (4 and 5 are tifffile's millimetre and micrometre).
_TIFF_UNIT_UM = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}
# Pixels per inch that image writers put in by default: not a measurement.
_DEFAULT_DPI = (72.0, 96.0)
_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")


def check_mpp_um(value: Any, where: str) -> float:
    """A pixel size as a positive finite float, or a clear error.

    Args:
        value: the value to check (number or numeric string).
        where: what it belongs to (file, datalist field, setting), for the message.

    Returns:
        The value in micrometres per pixel.

    Raises:
        SequenceDataError: not a positive finite number.
    """
    try:
        mpp = float(value)
    except (TypeError, ValueError):
        mpp = float("nan")
    if not (math.isfinite(mpp) and mpp > 0):
        raise SequenceDataError(
            f"{where}: mpp_um must be a positive number of micrometres per pixel, got {value!r}"
        )
    return mpp


def _ome_mpp(xml: str) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    factor = LENGTH_UNIT_UM.get(str(pixels.get("PhysicalSizeXUnit", "µm")).strip().lower())
    return None if factor is None else float(pixels.get("PhysicalSizeX")) * factor


def tiff_tag_spacing_um(page: Any, imagej_unit: Any = None) -> tuple[float, float] | None:
    """Pixel size (y, x) in um from a TIFF page's resolution tags, or None when they say nothing.

    Inch, centimetre, millimetre and micrometre units count; unitless tags count only with ImageJ's
    own ``unit``; 72 and 96 pixels per inch (writers' defaults) count as missing. The one reader of
    resolution tags for stacks, 2D images and whole slides.

    Args:
        page: a ``tifffile.TiffPage``.
        imagej_unit: the unit from ImageJ metadata, if any.

    Returns:
        ``(y, x)`` micrometres per pixel, or None.
    """
    try:
        xres, yres = (float(v) for v in page.get_resolution())
        unit = int(page.resolutionunit)
    except Exception:
        return None
    per_unit = _TIFF_UNIT_UM.get(unit)
    if per_unit is None and unit == 1 and imagej_unit is not None:  # ImageJ keeps its unit apart
        per_unit = LENGTH_UNIT_UM.get(str(imagej_unit).strip().lower())
    if per_unit is None or not (xres > 0 and yres > 0):
        return None
    if any(abs(xres * 25400.0 / per_unit - dpi) < 0.5 for dpi in _DEFAULT_DPI):
        return None  # 72 or 96 dpi: a writer's default, not a pixel size
    return per_unit / yres, per_unit / xres


def tiff_tag_mpp(page: Any, imagej_unit: Any = None) -> float | None:
    """Micrometres per pixel along x from a TIFF page's resolution tags (:func:`tiff_tag_spacing_um`).

    Args:
        page: a ``tifffile.TiffPage``.
        imagej_unit: the unit from ImageJ metadata, if any.

    Returns:
        The pixel size in um, or None.
    """
    spacing = tiff_tag_spacing_um(page, imagej_unit)
    return None if spacing is None else spacing[1]


def _tiff_mpp(path: Path) -> tuple[float | None, str]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if tif.is_ome and tif.ome_metadata:
            mpp = _ome_mpp(tif.ome_metadata)
            if mpp is not None:
                return mpp, "OME PhysicalSizeX"
        match = _APERIO_MPP.search(str(page.description or ""))
        if match:
            return float(match.group(1)), "Aperio MPP"
        ij_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
        mpp = tiff_tag_mpp(page, ij_unit)
        return mpp, "TIFF resolution tags"


def _nifti_mpp(path: Path) -> tuple[float | None, str]:
    import nibabel as nib

    header = nib.load(str(path)).header
    factor = {"micron": 1.0, "mm": 1e3, "meter": 1e6}.get(header.get_xyzt_units()[0])
    zooms = header.get_zooms()
    if factor is None or len(zooms) < 1 or not float(zooms[0]) > 0:
        return None, "NIfTI pixdim"
    return abs(float(zooms[0])) * factor, "NIfTI pixdim"


def read_pixel_size_um(path: str | os.PathLike) -> tuple[float | None, str]:
    """The in-plane pixel size stored in an image file (see the module docstring for the rules).

    Args:
        path: image or stack file.

    Returns:
        ``(mpp_um, source)``: micrometres per pixel (None when the file carries none) and the
        metadata field it came from.

    Raises:
        SequenceDataError: the file is missing or cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise SequenceDataError(f"{path}: file not found")
    name = path.name.lower()
    try:
        if name.endswith((".tif", ".tiff", ".svs")):
            return _tiff_mpp(path)
        if name.endswith((".nii", ".nii.gz")):
            return _nifti_mpp(path)
    except Exception as exc:
        raise SequenceDataError(
            f"{path}: cannot read its pixel-size metadata ({type(exc).__name__}: {exc})"
        ) from exc
    return None, "none (PNG/JPEG carry no microscope pixel size)"


def resolve_mpp_um(
    item_mpp_um: Any, path: str | os.PathLike | None, fallback_mpp_um: float | None, where: str
) -> tuple[float, str]:
    """The pixel size of one input: the datalist field, else the file's metadata, else the fallback.

    Args:
        item_mpp_um: the item's ``mpp_um`` field (None when absent).
        path: the input's (first) image file, read for metadata when the field is absent.
        fallback_mpp_um: the caller's setting for inputs without one (None: no fallback).
        where: what the input is (case, file), for messages.

    Returns:
        ``(mpp_um, source)``.

    Raises:
        SequenceDataError: none of the three gives a positive pixel size (says how to give one).
    """
    if item_mpp_um is not None:
        return check_mpp_um(item_mpp_um, f"{where}: datalist field 'mpp_um'"), "datalist"
    if path is not None:
        mpp, source = read_pixel_size_um(path)
        if mpp is not None:
            return check_mpp_um(mpp, f"{path} ({source})"), source
    if fallback_mpp_um is not None:
        return check_mpp_um(fallback_mpp_um, "the mpp_um setting"), "setting"
    raise SequenceDataError(f"{where}: no pixel size for {path}; {MPP_HINT}")
