"""MONAI Label image files as PathSeqSAM sequences, and masks written back in the image's format.

A MONAI Label datastore holds one file per image. Here a file is one sequence:

* a multi-page TIFF (OME-TIFF, ImageJ, plain) or a NIfTI volume: a stack of slices, positioned by
  the stack's own spacing metadata (see :mod:`pathseqsam.data.stacks`), else ``z_spacing_um`` apart;
* any other image (PNG, JPEG, ...): a single 2D patch, a sequence of one slice.

Masks go back in the same kind of file, so MONAI Label clients can overlay them and a label saved
from the UI trains the model: NIfTI in, NIfTI out (``[x, y, z]`` with the image's affine); TIFF in,
multi-page TIFF out; 2D in, PNG out. Pixel values are label values (0 background, 1 glomerulus).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import MapTransform

from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.image_io import read_image_size
from pathseqsam.data.stacks import is_nifti_path, is_tiff_path, probe_stack, save_stack
from pathseqsam.label.requests.options import RequestTooLarge
from pathseqsam.visualize import save_rgb

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "SequenceItemd",
    "header_pixels",
    "is_stack_file",
    "mask_suffix",
    "sequence_item",
    "sequence_length",
    "write_mask",
]

DEFAULT_MAX_PIXELS = 100_000_000
"""Pixels one request may decode (100 megapixels: slices x height x width), checked from the header."""

# Keys the loaders read from an item; from a request they would choose which slices get decoded
# (repeated indices multiply the work) or invent positions, so the server sets them, never a client.
_INTERNAL_KEYS = ("label", "slice_index", "positions_um", "positions", "degraded", "case", "slice_names")


def is_stack_file(path: str | os.PathLike) -> bool:
    """True for files read as stacks (TIFF, NIfTI); other images are single 2D patches."""
    return is_tiff_path(path) or is_nifti_path(path)


def sequence_item(
    image: str | os.PathLike,
    label: str | os.PathLike | None = None,
    z_spacing_um: float = 1.0,
    case: str | None = None,
) -> dict[str, Any]:
    """A datalist item for :class:`pathseqsam.data.transforms.LoadSequenced` from one image file.

    Args:
        image: stack (TIFF, NIfTI) or 2D image file.
        label: optional mask file of the same kind and size.
        z_spacing_um: slice spacing used when a stack has no spacing metadata.
        case: case name (default: the file name without its extensions).

    Returns:
        ``{"image", "case"}`` (+ ``"label"``): a stack is its path with ``positions_um`` (one ``[z]``
        per slice), a 2D image a one-element list of paths.

    Raises:
        SequenceDataError: missing or unreadable file, or label and image of different kinds.
    """
    image = Path(image)
    if not image.is_file():
        raise SequenceDataError(f"{image}: image file not found")
    item: dict[str, Any] = {"case": case or image.name.split(".")[0]}
    stack = is_stack_file(image)
    if label is not None and is_stack_file(label) != stack:
        raise SequenceDataError(
            f"{label}: label must be the same kind of file as image {image.name} "
            "(a TIFF/NIfTI stack for a stack, a 2D image for a 2D image)"
        )
    if stack:
        info = probe_stack(image, z_spacing_um=z_spacing_um)
        item["image"] = str(image)
        item["positions_um"] = [[z] for z in info.z_positions_um]
        if label is not None:
            item["label"] = str(label)
    else:
        item["image"] = [str(image)]
        if label is not None:
            item["label"] = [str(label)]
    return item


def header_pixels(path: str | os.PathLike, z_spacing_um: float = 1.0) -> int:
    """Pixels an image file holds (slices x height x width), read from its header only.

    Args:
        path: stack (TIFF, NIfTI) or 2D image file.
        z_spacing_um: passed to the stack probe (stacks without spacing metadata).

    Returns:
        The pixel count of every slice together.

    Raises:
        SequenceDataError: missing or unreadable file.
    """
    if is_stack_file(path):
        info = probe_stack(path, z_spacing_um=z_spacing_um)
        return int(info.n_slices) * int(info.height) * int(info.width)
    height, width = read_image_size(path)
    return int(height) * int(width)


class SequenceItemd(MapTransform):
    """A request's image path -> the keys of :func:`sequence_item` (before ``LoadSequenced``).

    Keys the loaders would read (``label``, ``slice_index``, ``positions_um``, ``degraded`` ...) are
    dropped first: they come from the image file, never from a request. With ``max_pixels`` the
    image's pixel count is read from its header before anything is decoded, and a larger image is
    refused with :class:`~pathseqsam.label.requests.options.RequestTooLarge` (HTTP 413).

    Args:
        keys: the image key (a file path).
        z_spacing_um: slice spacing for stacks without spacing metadata.
        max_pixels: pixel budget of one request (slices x height x width); None for no limit.
    """

    def __init__(
        self, keys: str = "image", z_spacing_um: float = 1.0, max_pixels: int | None = DEFAULT_MAX_PIXELS
    ) -> None:
        super().__init__(keys)
        self.z_spacing_um = float(z_spacing_um)
        self.max_pixels = None if max_pixels is None else int(max_pixels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = {k: v for k, v in data.items() if k not in _INTERNAL_KEYS}
        for key in self.key_iterator(d):
            if self.max_pixels is not None:
                pixels = header_pixels(d[key], self.z_spacing_um)
                if pixels > self.max_pixels:
                    raise RequestTooLarge(
                        f"{Path(d[key]).name}: {pixels / 1e6:.1f} megapixels (slices x height x width), more "
                        f"than the server's limit of {self.max_pixels / 1e6:g} per request "
                        "(--conf max_megapixels)"
                    )
            item = sequence_item(d[key], z_spacing_um=self.z_spacing_um)
            d[key] = item.pop("image")
            d.update(item)
        return d


def sequence_length(item: Mapping[str, Any]) -> int:
    """Number of slices of an item made by :func:`sequence_item`."""
    if isinstance(item["image"], (list, tuple)):
        return len(item["image"])
    return len(item["positions_um"])


def mask_suffix(image: str | os.PathLike, n_slices: int, region: bool = False) -> str:
    """File suffix of the mask returned for ``image``.

    Args:
        image: the input image file.
        n_slices: slices in the mask.
        region: the mask covers a region of the image (pathology ``location``/``size``), so it does
            not share the image's geometry.

    Returns:
        ``.nii.gz`` for NIfTI, ``.ome.tif`` for TIFF and for regions of several slices, else ``.png``.
    """
    if region:
        return ".png" if n_slices == 1 else ".ome.tif"
    if is_nifti_path(image):
        return ".nii.gz"
    if is_tiff_path(image):
        return ".ome.tif"
    if n_slices != 1:
        raise ValueError(f"{image}: a 2D image gives one slice, got a mask of {n_slices}")
    return ".png"


def write_mask(mask: np.ndarray, path: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Write label values ``[N, H, W]`` (uint8) to ``path``, atomically, in the format its suffix names.

    Args:
        mask: ``[N, H, W]`` label image.
        path: ``.png`` (N = 1), ``.nii``/``.nii.gz`` or a TIFF name (see :func:`mask_suffix`).
        source: the NIfTI image, whose affine a NIfTI mask copies.

    Returns:
        The path written.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if mask.ndim != 3:
        raise ValueError(f"mask must be [N, H, W], got shape {mask.shape}")
    if str(path).lower().endswith(".png"):
        if mask.shape[0] != 1:
            raise ValueError(f"{path}: a PNG holds one slice, got {mask.shape[0]}")
        return save_rgb(mask[0], path)
    nifti_source = source if source is not None and is_nifti_path(source) else None
    return save_stack(path, mask, affine_like=nifti_source)
