"""Slice stacks as sequences: multi-page TIFF, NIfTI volumes, and folders of slices with a CSV.

Each stack becomes ONE sequence whose positions are the slices' z in micrometres (``[[z0], [z1], ...]``).

Where z comes from, in order of preference:

* TIFF: OME-XML per-plane ``PositionZ`` (variable spacing), OME ``PhysicalSizeZ``, ImageJ ``spacing``
  (with its ``unit``; a missing unit is read as micrometres, ImageJ's ``pixel`` unit as uncalibrated);
  then the ``z_spacing_um`` setting; with ``assume_isotropic=True`` the in-plane pixel size from the
  resolution tags (TIFF has no z resolution tag, so this is an explicit assumption, off by default).
* NIfTI: a PathSeqSAM header extension (code 6, JSON ``{"pathseqsam": {"slice_positions_um": [...]}}``)
  for variable spacing, else ``pixdim[3]`` in the header's spatial unit; a header with unknown units
  (nibabel's default, where pixdim is 1 whatever the data) is not trusted: ``z_spacing_um`` is used.
* Otherwise: :class:`~pathseqsam.data.errors.SequenceDataError` naming the file.

Array conventions: a TIFF series is read with its axes (``ZYXS``, ``ZYX``, ``IYX``, ``ZCYX`` ...) and
returned as ``[N, H, W]`` or ``[N, H, W, C]``. A NIfTI volume is indexed ``[x, y, z(, c)]`` (NIfTI
order), so slice ``k`` is ``data[:, :, k].T`` (rows = y); RGB volumes are 4-D ``[x, y, z, 3]`` (or 5-D
``[x, y, z, 1, 3]``).
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import tifffile

from pathseqsam.atomic import atomic_write
from pathseqsam.data.datalist import validate_positions
from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.resolution import LENGTH_UNIT_UM, tiff_tag_spacing_um

__all__ = [
    "NIFTI_POSITIONS_ECODE",
    "StackInfo",
    "is_nifti_path",
    "is_tiff_path",
    "probe_stack",
    "read_stack_slices",
    "save_nifti_stack",
    "save_stack",
    "save_tiff_stack",
    "stack_item",
]

NIFTI_POSITIONS_ECODE = 6  # NIFTI_ECODE_COMMENT: free text, here JSON


@dataclass(frozen=True)
class StackInfo:
    """What a stack holds, read from its header only.

    Attributes:
        path: stack file.
        n_slices: number of slices N.
        height: slice height in pixels.
        width: slice width in pixels.
        channels: 1 (gray) or 3/4 (RGB/RGBA).
        z_positions_um: one z per slice, micrometres.
        xy_spacing_um: in-plane pixel size ``(y, x)`` in micrometres, or None if unknown.
        spacing_source: where z came from (e.g. ``"ome-plane"``, ``"imagej"``, ``"nifti-header"``,
            ``"setting"``).
    """

    path: Path
    n_slices: int
    height: int
    width: int
    channels: int
    z_positions_um: tuple[float, ...]
    xy_spacing_um: tuple[float, float] | None
    spacing_source: str


def is_tiff_path(path: str | os.PathLike) -> bool:
    """True for ``.tif``/``.tiff`` (including ``.ome.tif``)."""
    return Path(path).suffix.lower() in (".tif", ".tiff")


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True for ``.nii`` and ``.nii.gz``."""
    name = Path(path).name.lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def _unit_factor(unit: Any, path: Path, field: str) -> float:
    key = str(unit).strip().lower() if unit is not None else "um"
    if key not in LENGTH_UNIT_UM:
        raise SequenceDataError(f"{path}: unknown length unit {unit!r} in {field}; expected um, nm, mm, ...")
    return LENGTH_UNIT_UM[key]


def _no_spacing(path: Path, looked: str) -> SequenceDataError:
    return SequenceDataError(
        f"{path}: stack has no z-spacing (looked for {looked}); expected spacing metadata, or pass "
        "z_spacing_um=<micrometres between slices>"
    )


def _uniform(n: int, spacing: float, path: Path, source: str) -> tuple[float, ...]:
    if not (np.isfinite(spacing) and spacing > 0):
        raise SequenceDataError(f"{path}: z-spacing from {source} is {spacing}; expected a positive number")
    return tuple(float(k * spacing) for k in range(n))


# ---------------------------------------------------------------- TIFF
def _tiff_layout(path: Path, axes: str, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Return (n_slices, height, width, channels) for a TIFF series, or raise."""
    dims = dict(zip(axes, shape))
    extra = [a for a in axes if a not in "YXSC" and dims[a] > 1]
    if len(extra) > 1:
        raise SequenceDataError(
            f"{path}: series axes {axes!r} shape {shape} have several stack dimensions {extra}; expected one (Z)"
        )
    n = dims[extra[0]] if extra else 1
    channels = dims.get("S", 1) * dims.get("C", 1)
    if channels not in (1, 3, 4):
        raise SequenceDataError(f"{path}: {channels} channels (axes {axes!r}); expected 1, 3 or 4")
    return n, dims["Y"], dims["X"], channels


def _ome_z(path: Path, xml: str, n: int) -> tuple[tuple[float, ...] | None, str]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise SequenceDataError(f"{path}: OME-XML metadata cannot be parsed ({exc})") from exc
    pixels = next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
    if pixels is None:
        return None, ""
    by_z: dict[int, float] = {}
    for plane in pixels:
        if plane.tag.endswith("Plane") and plane.get("PositionZ") is not None:
            factor = _unit_factor(plane.get("PositionZUnit", "µm"), path, "OME Plane PositionZUnit")
            by_z.setdefault(int(plane.get("TheZ", "0")), float(plane.get("PositionZ")) * factor)
    if len(by_z) == n and n > 1:
        return tuple(by_z[k] for k in sorted(by_z)), "ome-plane"
    if pixels.get("PhysicalSizeZ") is not None:
        factor = _unit_factor(pixels.get("PhysicalSizeZUnit", "µm"), path, "OME PhysicalSizeZUnit")
        return _uniform(n, float(pixels.get("PhysicalSizeZ")) * factor, path, "OME PhysicalSizeZ"), "ome"
    return None, ""


def _probe_tiff(path: Path, z_spacing_um: float | None, assume_isotropic: bool) -> StackInfo:

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            n, height, width, channels = _tiff_layout(path, series.axes, tuple(series.shape))
            ome = tif.ome_metadata if tif.is_ome else None
            imagej = (tif.imagej_metadata or {}) if tif.is_imagej else {}
            page = tif.pages[0]
            ij_unit = imagej.get("unit")
            ij_factor = (
                None
                if ij_unit is None or str(ij_unit).lower() == "pixel"
                else _unit_factor(ij_unit, path, "ImageJ unit")
            )
            xy = tiff_tag_spacing_um(page, None if ij_factor is None else ij_unit)
    except SequenceDataError:
        raise
    except Exception as exc:
        raise SequenceDataError(f"{path}: cannot read TIFF stack ({type(exc).__name__}: {exc})") from exc
    z: tuple[float, ...] | None = None
    source = ""
    if ome:
        z, source = _ome_z(path, ome, n)
    if z is None and "spacing" in imagej and str(ij_unit).lower() != "pixel":
        factor = 1.0 if ij_factor is None else ij_factor  # ImageJ without a unit: micrometres
        z, source = _uniform(n, float(imagej["spacing"]) * factor, path, "ImageJ spacing"), "imagej"
    if z is None and z_spacing_um is not None:
        z, source = _uniform(n, float(z_spacing_um), path, "the z_spacing_um setting"), "setting"
    if z is None and assume_isotropic and xy is not None:
        z, source = _uniform(n, float(xy[1]), path, "the resolution tags"), "resolution"
    if z is None:
        if n > 1:
            raise _no_spacing(path, "OME Plane PositionZ / PhysicalSizeZ and ImageJ 'spacing'")
        z, source = (0.0,), "single-slice"
    return StackInfo(path, n, height, width, channels, z, xy, source)


# ---------------------------------------------------------------- NIfTI
def _nifti_layout(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Return (n_slices, height, width, channels) for a NIfTI data shape [x, y, z(, 1)(, c)]."""
    dims = list(shape)
    if len(dims) == 2:
        dims.append(1)
    if len(dims) == 5 and dims[3] == 1:
        dims = dims[:3] + dims[4:]
    channels = dims[3] if len(dims) == 4 else 1
    if len(dims) > 4 or channels not in (1, 3, 4):
        raise SequenceDataError(
            f"{path}: NIfTI data shape {shape}; expected [x, y, z] or [x, y, z, c] with c in (1, 3, 4)"
        )
    return dims[2], dims[1], dims[0], channels


def _nifti_extension_positions(header: Any) -> list[float] | None:
    for ext in header.extensions:
        if ext.get_code() != NIFTI_POSITIONS_ECODE:
            continue
        try:
            content = json.loads(ext.get_content().decode("utf-8").rstrip("\x00"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue  # someone else's comment
        if isinstance(content, dict) and isinstance(content.get("pathseqsam"), dict):
            return content["pathseqsam"].get("slice_positions_um")
    return None


def _probe_nifti(path: Path, z_spacing_um: float | None) -> StackInfo:

    try:
        img = nib.load(str(path))
        header = img.header
        shape = tuple(int(s) for s in img.shape)
        zooms = [float(z) for z in header.get_zooms()]
        space_unit = header.get_xyzt_units()[0]
        ext_positions = _nifti_extension_positions(header)
    except Exception as exc:
        raise SequenceDataError(f"{path}: cannot read NIfTI volume ({type(exc).__name__}: {exc})") from exc
    n, height, width, channels = _nifti_layout(path, shape)
    factor = {"micron": 1.0, "mm": 1e3, "meter": 1e6}.get(space_unit)
    xy = (abs(zooms[1]) * factor, abs(zooms[0]) * factor) if factor is not None and len(zooms) >= 2 else None
    if ext_positions is not None:
        arr = validate_positions(ext_positions, n, f"{path} (PathSeqSAM header extension)")
        if arr.shape[1] != 1:
            raise SequenceDataError(f"{path}: header extension positions must be one z per slice")
        z, source = tuple(float(v) for v in arr[:, 0]), "nifti-extension"
    elif factor is not None and len(zooms) >= 3:
        z, source = _uniform(n, abs(zooms[2]) * factor, path, "pixdim[3]"), "nifti-header"
    elif z_spacing_um is not None:
        z, source = _uniform(n, float(z_spacing_um), path, "the z_spacing_um setting"), "setting"
    elif n == 1:
        z, source = (0.0,), "single-slice"
    else:
        raise _no_spacing(path, "NIfTI pixdim with spatial units set (xyzt_units is 'unknown')")
    return StackInfo(path, n, height, width, channels, z, xy, source)


# ---------------------------------------------------------------- common API
def probe_stack(
    path: str | os.PathLike, z_spacing_um: float | None = None, assume_isotropic: bool = False
) -> StackInfo:
    """Read a stack's size and slice positions from its header (pixels are not decoded).

    Args:
        path: ``.tif``/``.tiff``/``.ome.tif`` or ``.nii``/``.nii.gz`` stack.
        z_spacing_um: fallback slice spacing when the file has none (see the module docstring).
        assume_isotropic: TIFF only: use the in-plane pixel size as z-spacing when nothing else exists.

    Returns:
        The :class:`StackInfo`.

    Raises:
        SequenceDataError: missing/unreadable file, unsupported layout, or no spacing anywhere.
    """
    path = Path(path)
    if not path.is_file():
        raise SequenceDataError(f"{path}: stack file not found")
    if is_tiff_path(path):
        return _probe_tiff(path, z_spacing_um, assume_isotropic)
    if is_nifti_path(path):
        return _probe_nifti(path, z_spacing_um)
    raise SequenceDataError(f"{path}: unsupported stack format; expected .tif/.tiff or .nii/.nii.gz")


def _tiff_to_nhwc(arr: np.ndarray, axes: str, path: Path) -> np.ndarray:
    keep = [i for i, a in enumerate(axes) if a in "YXSC" or arr.shape[i] > 1]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    stack = [a for a in axes if a not in "YXSC"]
    order = [axes.index(a) for a in (*stack, "Y", "X")] + [axes.index(a) for a in axes if a in "SC"]
    arr = np.transpose(arr, order)
    if not stack:
        arr = arr[None]
    n, h, w = arr.shape[:3]
    channels = int(np.prod(arr.shape[3:])) if arr.ndim > 3 else 1
    return arr.reshape(n, h, w, channels) if channels > 1 else arr.reshape(n, h, w)


def read_stack_slices(path: str | os.PathLike, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode slices of a stack.

    Args:
        path: TIFF or NIfTI stack.
        indices: slices to read, in the order wanted; all when None. TIFF stacks stored one page per
            slice and NIfTI files read only these slices.

    Returns:
        ``[n, H, W]`` or ``[n, H, W, C]`` array in the file's dtype.

    Raises:
        SequenceDataError: unreadable file or index out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise SequenceDataError(f"{path}: stack file not found")
    try:
        if is_tiff_path(path):
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                n = _tiff_layout(path, series.axes, tuple(series.shape))[0]
                idx = list(range(n)) if indices is None else [int(i) for i in indices]
                _check_indices(idx, n, path)
                pages = series.pages
                one_page_per_slice = len(pages) == n and series.axes.lstrip("ZIQT")[:2] == "YX"
                if one_page_per_slice and all(pages[i] is not None for i in idx):
                    slices = [pages[i].asarray() for i in idx]
                    return _tiff_to_nhwc(np.stack(slices), "Z" + pages[0].axes, path)
                return _tiff_to_nhwc(series.asarray(), series.axes, path)[idx]
        if is_nifti_path(path):
            img = nib.load(str(path))
            n = _nifti_layout(path, tuple(img.shape))[0]
            idx = list(range(n)) if indices is None else [int(i) for i in indices]
            _check_indices(idx, n, path)
            out = []
            for k in idx:
                data = np.asarray(img.dataobj[:, :, k] if len(img.shape) >= 3 else img.dataobj)
                data = data.reshape(data.shape[0], data.shape[1], -1)  # [x, y, c]
                data = np.transpose(data, (1, 0, 2))  # [y, x, c]
                out.append(data[..., 0] if data.shape[-1] == 1 else data)
            return np.stack(out)
    except SequenceDataError:
        raise
    except Exception as exc:
        raise SequenceDataError(f"{path}: cannot read stack slices ({type(exc).__name__}: {exc})") from exc
    raise SequenceDataError(f"{path}: unsupported stack format; expected .tif/.tiff or .nii/.nii.gz")


def _check_indices(idx: Sequence[int], n: int, path: Path) -> None:
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise SequenceDataError(f"{path}: slice index {bad[0]} out of range; the stack has {n} slices")
    seen: set[int] = set()
    for i in idx:  # a slice twice is never a sequence, and repeats multiply the decoding
        if i in seen:
            raise SequenceDataError(
                f"{path}: slice index {i} requested more than once; expected distinct slice indices"
            )
        seen.add(i)


def _check_volume(volume: np.ndarray, z_positions_um: Sequence[float] | None, path: Path) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim not in (3, 4) or (volume.ndim == 4 and volume.shape[-1] not in (1, 3, 4)):
        raise SequenceDataError(f"{path}: expected a volume [N, H, W] or [N, H, W, C], got {volume.shape}")
    if z_positions_um is not None:
        validate_positions(list(z_positions_um), volume.shape[0], str(path))
    return volume


def save_tiff_stack(
    path: str | os.PathLike,
    volume: np.ndarray,
    z_positions_um: Sequence[float] | None = None,
    xy_spacing_um: float | None = None,
) -> Path:
    """Write ``[N, H, W(, C)]`` as an OME-TIFF with per-plane z positions, atomically.

    ``PhysicalSizeZ`` holds the mean spacing (nominal) and each ``Plane`` its exact ``PositionZ``, so
    variable spacing survives; pages are zlib-compressed.

    Args:
        path: destination (``.ome.tif`` recommended).
        volume: uint8/uint16 volume, RGB as the last axis.
        z_positions_um: one z per slice in micrometres (None: not written, e.g. for masks whose
            positions are those of their image).
        xy_spacing_um: in-plane pixel size (also written as resolution tags).

    Returns:
        The path written.
    """
    path = Path(path)
    volume = _check_volume(volume, z_positions_um, path)
    rgb = volume.ndim == 4 and volume.shape[-1] in (3, 4)
    z = [] if z_positions_um is None else [float(v) for v in z_positions_um]
    metadata: dict[str, Any] = {"axes": "ZYXS" if rgb else "ZYX"}
    if z:
        metadata["Plane"] = {"PositionZ": z, "PositionZUnit": ["µm"] * len(z)}
    if len(z) > 1:
        metadata["PhysicalSizeZ"] = float(np.mean(np.diff(z)))
        metadata["PhysicalSizeZUnit"] = "µm"
    kwargs: dict[str, Any] = {}
    if xy_spacing_um is not None:
        metadata.update(PhysicalSizeX=xy_spacing_um, PhysicalSizeY=xy_spacing_um)
        kwargs.update(resolution=(1.0 / xy_spacing_um, 1.0 / xy_spacing_um), resolutionunit="MICROMETER")
    data = volume[..., 0] if volume.ndim == 4 and not rgb else volume

    def write(tmp: Path) -> None:
        tifffile.imwrite(
            tmp, data, ome=True, photometric="rgb" if rgb else "minisblack", compression="zlib",
            metadata=metadata, **kwargs,
        )  # fmt: skip

    return atomic_write(path, write)


def save_nifti_stack(
    path: str | os.PathLike,
    volume: np.ndarray,
    z_positions_um: Sequence[float] | None = None,
    xy_spacing_um: float = 1.0,
    affine_like: str | os.PathLike | None = None,
) -> Path:
    """Write ``[N, H, W(, C)]`` as NIfTI ``[x, y, z(, c)]`` in micrometre units, atomically.

    ``pixdim[3]`` holds the mean spacing; the exact per-slice z go into a header extension that
    :func:`probe_stack` reads (other tools ignore it).

    Args:
        path: destination ``.nii`` or ``.nii.gz``.
        volume: volume, RGB as the last axis.
        z_positions_um: one z per slice in micrometres (None: slices 1 um apart from 0, or the
            geometry of ``affine_like``).
        xy_spacing_um: in-plane pixel size.
        affine_like: a NIfTI whose affine and units are copied instead (masks predicted from that
            image then overlay it in any viewer).

    Returns:
        The path written.
    """
    path = Path(path)
    volume = _check_volume(volume, z_positions_um, path)
    data = np.transpose(volume, (2, 1, 0, 3) if volume.ndim == 4 else (2, 1, 0))
    if affine_like is not None:
        source = nib.load(str(affine_like))
        img = nib.Nifti1Image(np.ascontiguousarray(data), source.affine)
        img.header.set_xyzt_units(*source.header.get_xyzt_units())
    else:
        z = [0.0] if z_positions_um is None else [float(v) for v in z_positions_um]
        dz = float(np.mean(np.diff(z))) if len(z) > 1 else 1.0
        affine = np.diag([xy_spacing_um, xy_spacing_um, dz, 1.0])
        affine[2, 3] = z[0]
        img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
        img.header.set_xyzt_units("micron")
    if z_positions_um is not None:
        payload = json.dumps({"pathseqsam": {"slice_positions_um": [float(v) for v in z_positions_um]}})
        img.header.extensions.append(nib.nifti1.Nifti1Extension(NIFTI_POSITIONS_ECODE, payload.encode()))
    return atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def save_stack(
    path: str | os.PathLike,
    volume: np.ndarray,
    z_positions_um: Sequence[float] | None = None,
    xy_spacing_um: float | None = None,
    affine_like: str | os.PathLike | None = None,
) -> Path:
    """Write a stack in the format its name asks for: NIfTI for ``.nii``/``.nii.gz``, else OME-TIFF.

    The one stack writer of the package: the synthetic generator, the bundle's inference writer and
    the MONAI Label app all write stacks through it.

    Args:
        path: destination.
        volume: ``[N, H, W]`` or ``[N, H, W, C]`` array, written with its dtype.
        z_positions_um: one z per slice in micrometres, or None.
        xy_spacing_um: in-plane pixel size, or None (unknown; NIfTI then says 1 um).
        affine_like: NIfTI only: copy this NIfTI's affine (see :func:`save_nifti_stack`).

    Returns:
        The path written.
    """
    if is_nifti_path(path):
        spacing = 1.0 if xy_spacing_um is None else xy_spacing_um
        return save_nifti_stack(path, volume, z_positions_um, spacing, affine_like)
    return save_tiff_stack(path, volume, z_positions_um, xy_spacing_um)


def stack_item(
    image: str | os.PathLike,
    label: str | os.PathLike | None = None,
    case: str | None = None,
    class_name: str = "stack",
    z_spacing_um: float | None = None,
    assume_isotropic: bool = False,
) -> dict[str, Any]:
    """Datalist item for one stack (and its mask stack).

    Args:
        image: TIFF or NIfTI image stack.
        label: mask stack with the same number and size of slices, or None.
        case: case name (default: the file name without suffixes).
        class_name: value of the item's ``class``.
        z_spacing_um: fallback spacing (see :func:`probe_stack`).
        assume_isotropic: see :func:`probe_stack`.

    Returns:
        Item with ``image``, ``label`` (if any), ``positions_um`` (``[[z], ...]``), ``case``, ``class``
        and ``spacing_source``.

    Raises:
        SequenceDataError: unreadable stacks, no spacing, or a mask stack of another shape.
    """
    info = probe_stack(image, z_spacing_um, assume_isotropic)
    item: dict[str, Any] = {
        "image": str(image),
        "positions_um": [[z] for z in info.z_positions_um],
        "case": case or Path(image).name.split(".")[0],
        "class": class_name,
        "spacing_source": info.spacing_source,
    }
    if label is not None:
        # The mask's own spacing is irrelevant (positions come from the image): never fail on it.
        linfo = probe_stack(label, z_spacing_um=1.0)
        if (linfo.n_slices, linfo.height, linfo.width) != (info.n_slices, info.height, info.width):
            raise SequenceDataError(
                f"{label}: mask stack is {linfo.n_slices} x {linfo.height} x {linfo.width} (slices x H x W) but "
                f"image stack {Path(image).name} is {info.n_slices} x {info.height} x {info.width}; expected equal"
            )
        item["label"] = str(label)
    return item
