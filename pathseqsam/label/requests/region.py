"""The pathology convention of MONAI Label: a request may address a region of a larger image.

Pathology clients (QuPath, Digital Slide Archive) send ``location`` ``[x, y]`` (the region's top-left
pixel) and ``size`` ``[width, height]``, and their clicks and boxes in pixels of the WHOLE image.
The region is cut out of every slice, the model sees only that region, clicks are shifted into it,
and the returned mask covers the region (its ``location`` and ``size`` are echoed in the result).
Here only full-resolution pixels are addressed (``level`` 0): patches and stacks are read whole.
Pyramidal whole-slide images take the other path, :mod:`pathseqsam.label.slides.region`, which reads
only the region, at any level.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["CropRegiond", "Region", "request_region"]


@dataclass(frozen=True)
class Region:
    """A rectangle of a slice, in pixels: top-left ``(x, y)`` (x along columns), ``width``, ``height``."""

    x: int
    y: int
    width: int
    height: int


def _int_pair(value: Any, field: str) -> tuple[int, int]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"request '{field}' must be two numbers [x, y] / [width, height], got {value!r}"
        ) from exc
    if a != int(a) or b != int(b):
        raise ValueError(f"request '{field}' must hold whole pixels, got {value!r}")
    return int(a), int(b)


def request_region(request: Mapping[str, Any], height: int, width: int) -> Region | None:
    """The region a request addresses, or None for the whole slice.

    Args:
        request: MONAI Label request (``location``, ``size``, ``level``).
        height: slice height in pixels.
        width: slice width in pixels.

    Returns:
        The region when ``size`` is given and non-zero (the pathology app sends ``[0, 0]`` for
        "whole image"), else None.

    Raises:
        ValueError: a ``level`` other than 0, malformed values, an empty size, or a region that does
            not lie inside the slice (the message gives both).
    """
    level = request.get("level")
    if level not in (None, 0, "0"):
        raise ValueError(
            f"request 'level' {level!r} is not supported: this image has one level (0); only pyramidal slides have more"
        )
    size = request.get("size")
    if size is None or (len(size) == 2 and not any(size)):
        return None
    w, h = _int_pair(size, "size")
    location = request.get("location")
    x, y = (0, 0) if location is None else _int_pair(location, "location")
    if w <= 0 or h <= 0:
        raise ValueError(f"request 'size' must be positive [width, height], got {list(size)}")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(
            f"request region location {[x, y]} size {[w, h]} does not lie inside the {width}x{height} px "
            "image; expected 0 <= x, x + width <= image width, and the same for y"
        )
    return Region(x, y, w, h)


class CropRegiond(MapTransform):
    """Cut the requested region out of ``[C, N, H, W]`` tensors; sets ``region`` (a :class:`Region` or None).

    Args:
        keys: tensor keys (the image).
        region_key: output key for the region.
    """

    def __init__(self, keys: KeysCollection = "image", region_key: str = "region") -> None:
        super().__init__(keys)
        self.region_key = region_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = torch.as_tensor(d[self.first_key(d)])
        h, w = int(first.shape[-2]), int(first.shape[-1])
        # the region is in the image's own pixels; the tensors may be at the bundle's working
        # resolution (LoadSequenced records the input's size in original_size)
        sizes = d.get("original_size")
        full_h, full_w = (
            (int(v) for v in torch.as_tensor(sizes).reshape(-1, 2)[0]) if sizes is not None else (h, w)
        )
        region = request_region(d, full_h, full_w)
        d[self.region_key] = region
        if region is not None:
            y0, y1 = round(region.y * h / full_h), round((region.y + region.height) * h / full_h)
            x0, x1 = round(region.x * w / full_w), round((region.x + region.width) * w / full_w)
            for key in self.key_iterator(d):
                x = torch.as_tensor(d[key])
                d[key] = x[..., y0:y1, x0:x1].contiguous()
            if sizes is not None:  # the prediction goes back to the region's own pixels
                d["original_size"] = torch.tensor(
                    [[region.height, region.width]] * len(torch.as_tensor(sizes))
                )
        return d
