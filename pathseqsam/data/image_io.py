"""Read one 2D slice (JPEG, PNG, TIFF, ...) and convert it to RGB in [0, 1] or to a binary mask.

Conversion rules (documented here because they decide what the network sees):

* grayscale is replicated to three channels; gray+alpha and RGBA are composited over WHITE, the
  colour of empty glass in bright-field pathology;
* integer images are scaled by their type's range (8-bit by 255, 16-bit by 65535); other integer
  types by 255 or 65535, whichever covers the data; float images are taken as [0, 1] when their
  maximum is <= 1, else as [0, 255];
* colour spaces other than RGB (CMYK and YCbCr JPEGs, LAB, HSV) are converted to RGB by Pillow;
  palette images expand to RGBA, bilevel images to 8-bit gray;
* masks: colour masks are reduced by the channel maximum. Masks from LOSSLESS files (PNG, TIFF,
  NIfTI, BMP ...: anything but JPEG) are label images: every non-zero value is foreground, so
  instance ids (1, 2, 3 ...), 16-bit labels and 0/255 masks all keep their objects. Masks from
  JPEG files (lossy) are foreground where value > ``threshold`` times 255 (or times 65535 for
  values above 255): the threshold (default 0.5) absorbs JPEG ringing, which the official KPIs
  ``mask > 0`` rule turns into false foreground. An array of unknown origin is treated as lossy
  (``lossy`` overrides the guess from the file name).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pathseqsam.data.errors import SequenceDataError

__all__ = [
    "IMAGE_SUFFIXES",
    "LOSSY_SUFFIXES",
    "is_lossy_path",
    "read_image_size",
    "read_slice",
    "to_binary_mask",
    "to_rgb_float",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
# Pillow modes that are not RGB(A)/gray: converted, since their channels are not red, green, blue
_TO_RGB = {"CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "P": "RGBA", "PA": "RGBA", "1": "L"}
_TIFF_SUFFIXES = (".tif", ".tiff")


def _unreadable(path: str | os.PathLike, exc: BaseException) -> SequenceDataError:
    return SequenceDataError(
        f"{path}: cannot read image ({type(exc).__name__}: {exc}); expected a readable JPEG/PNG/TIFF slice"
    )


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Return ``(height, width)`` of a 2D image from its header, without decoding the pixels.

    Args:
        path: image file.

    Returns:
        ``(height, width)`` in pixels.

    Raises:
        SequenceDataError: the file is missing or its header cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise SequenceDataError(f"{path}: file not found")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tif.pages[0].shape
                axes = tif.pages[0].axes
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
        return int(height), int(width)
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def read_slice(
    path: str | os.PathLike, min_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one 2D slice in its native dtype.

    Args:
        path: JPEG, PNG (8/16-bit, gray/RGB/RGBA), TIFF (first page) or any format Pillow reads.
        min_size: optional ``(height, width)`` the caller will resize to. JPEGs are then decoded at the
            smallest power-of-two reduction that is still at least this large (DCT-domain scaling, much
            faster and lighter than decoding 2048 px patches in full); other formats ignore it.

    Returns:
        ``(array, (height, width))``: the array is ``[H, W]`` or ``[H, W, C]``; the size is the full
        size stored in the file (before any JPEG reduction), for writing outputs at native size.

    Raises:
        SequenceDataError: missing, truncated or otherwise unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise SequenceDataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in _TIFF_SUFFIXES:
            import tifffile

            arr = tifffile.imread(path, key=0)
            if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
                arr = np.moveaxis(arr, 0, -1)  # planar (separate) samples
            return arr, (int(arr.shape[0]), int(arr.shape[1]))
        if suffix == ".png":
            # imagecodecs keeps 16-bit RGB(A) PNGs at 16 bits; Pillow would truncate them to 8 bits.
            import imagecodecs

            arr = imagecodecs.png_decode(path.read_bytes())
            return arr, (int(arr.shape[0]), int(arr.shape[1]))
        from PIL import Image

        with Image.open(path) as im:
            width, height = im.size
            if min_size is not None and im.format == "JPEG":
                im.draft(im.mode, (int(min_size[1]), int(min_size[0])))
            im.load()
            if im.mode in _TO_RGB:  # e.g. a CMYK JPEG: 4 channels that are not RGBA
                im = im.convert(_TO_RGB[im.mode])
            arr = np.asarray(im)
        return arr, (int(height), int(width))
    except SequenceDataError:
        raise
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _channels_last(arr: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim == 3:
        return arr
    raise SequenceDataError(
        f"{path}: expected a 2D slice [H, W] or [H, W, C], got an array of shape {arr.shape}"
    )


def _unit_scale(arr: np.ndarray) -> float:
    """Divisor that maps the array's values to [0, 1] (see the module docstring)."""
    if arr.dtype == np.uint8:
        return 255.0
    if arr.dtype == np.uint16:
        return 65535.0
    peak = float(arr.max()) if arr.size else 0.0
    if np.issubdtype(arr.dtype, np.integer):
        return 255.0 if peak <= 255 else 65535.0
    return 1.0 if peak <= 1.0 else 255.0


def to_rgb_float(arr: np.ndarray, path: str | os.PathLike = "<array>") -> np.ndarray:
    """Convert a decoded slice to RGB float32 in [0, 1], shape ``[H, W, 3]``.

    Args:
        arr: ``[H, W]`` or ``[H, W, C]`` with C in 1 (gray), 2 (gray+alpha), 3 (RGB), 4 (RGBA).
        path: file the array came from, for error messages.

    Returns:
        float32 array ``[H, W, 3]`` in [0, 1].

    Raises:
        SequenceDataError: unsupported number of channels or non-finite values.
    """
    arr = _channels_last(np.asarray(arr), path)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    channels = arr.shape[-1]
    if channels not in (1, 2, 3, 4):
        raise SequenceDataError(
            f"{path}: expected 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA) channels, got {channels}"
        )
    out = arr.astype(np.float32) / np.float32(_unit_scale(arr))
    if not np.isfinite(out).all():
        raise SequenceDataError(f"{path}: image contains NaN or infinite values")
    out = np.clip(out, 0.0, 1.0)
    if channels in (2, 4):  # composite over white glass
        alpha = out[..., -1:]
        out = out[..., :-1] * alpha + (1.0 - alpha)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def is_lossy_path(path: str | os.PathLike) -> bool:
    """True for JPEG files (``.jpg``/``.jpeg``; a ``#slice`` suffix, as in ``stack.tif#3``, is ignored)."""
    name = str(path).lower().split("#", 1)[0]
    return name.endswith(LOSSY_SUFFIXES)


def to_binary_mask(
    arr: np.ndarray,
    threshold: float = 0.5,
    path: str | os.PathLike = "<array>",
    lossy: bool | None = None,
) -> np.ndarray:
    """Binarise a decoded mask slice (see the module docstring for the rules).

    Args:
        arr: ``[H, W]`` or ``[H, W, C]`` mask.
        threshold: for lossy (JPEG) masks, the fraction of the full range (0 < threshold < 1) above
            which a pixel is foreground.
        path: file the array came from (its suffix tells lossless from lossy), for messages too.
        lossy: override: True thresholds, False takes every non-zero value; None guesses from
            ``path`` (JPEG is lossy, a known other file lossless, ``"<array>"`` lossy).

    Returns:
        bool array ``[H, W]``.

    Raises:
        SequenceDataError: bad threshold, unsupported shape or non-finite values.
    """
    if not 0.0 < threshold < 1.0:
        raise SequenceDataError(f"mask threshold must be in (0, 1), got {threshold} (for {path})")
    if lossy is None:
        lossy = str(path) == "<array>" or is_lossy_path(path)
    arr = _channels_last(np.asarray(arr), path)
    if arr.shape[-1] in (2, 4):
        arr = arr[..., :-1]  # drop alpha
    arr = arr.max(axis=-1)
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise SequenceDataError(f"{path}: mask contains NaN or infinite values")
    if not lossy:
        return arr != 0  # a label image: instance ids, 16-bit labels, 0/1 or 0/255 all count
    if np.issubdtype(arr.dtype, np.integer) and arr.size and int(arr.max()) <= 1 and int(arr.min()) >= 0:
        return arr > 0  # a {0, 1} label image
    return arr.astype(np.float64) > threshold * _unit_scale(arr)
