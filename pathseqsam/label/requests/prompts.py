"""MONAI Label clicks and boxes as PathSeqSAM prompts.

MONAI Label's conventions (those of its SAM2 task and its 3D/2D clients):

* ``foreground`` / ``background``: lists of clicks ``[x, y]`` or ``[x, y, z]``, in pixel indices of the
  image as loaded, x along the columns of a slice and y along its rows (NIfTI: voxel ``i, j``), z the
  slice index. A click without z belongs to the slice named by ``slice`` (or to the only slice);
* ``roi``: a box ``[x0, y0, x1, y1]`` on that slice, or ``[x0, y0, x1, y1, z0, z1]`` on every slice
  ``z0 <= z < z1`` (at least ``z0``); an empty list means no box;
* pathology regions (``location``/``size``, :mod:`pathseqsam.label.requests.region`): clicks and boxes are in
  whole-image pixels and are shifted into the region.

The result is :meth:`PathSeqSAM.forward`'s ``prompts`` for a batch of one sequence: clicks become
points (label 1 foreground, 0 background, -1 padding), a box SAM2's two box corners.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from pathseqsam.label.requests.region import Region

__all__ = ["request_prompts"]


def _numbers(value: Any, lengths: tuple[int, ...], where: str) -> list[float]:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{where}: expected a list of numbers") from exc
    if len(out) not in lengths or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{where}: expected {' or '.join(map(str, lengths))} finite numbers")
    return out


def _slice_index(value: float, n_slices: int, where: str) -> int:
    if not math.isfinite(value) or value != int(value) or not 0 <= value < n_slices:
        raise ValueError(f"{where}: slice index {value:g} is not one of the image's slices 0..{n_slices - 1}")
    return int(value)


def _default_slice(request: Mapping[str, Any], n_slices: int) -> int | None:
    if request.get("slice") is not None:
        where = f"request 'slice' = {request['slice']!r}"
        return _slice_index(_numbers([request["slice"]], (1,), where)[0], n_slices, where)
    return 0 if n_slices == 1 else None


def _no_slice(where: str) -> ValueError:
    return ValueError(f"{where}: no slice index for a sequence of several slices; send z or set 'slice'")


def request_prompts(
    request: Mapping[str, Any],
    n_slices: int,
    height: int,
    width: int,
    region: Region | None = None,
    scale: tuple[float, float] = (1.0, 1.0),
) -> tuple[dict[str, Tensor], list[int]]:
    """Build PathSeqSAM prompts from a MONAI Label request.

    Args:
        request: MONAI Label request with ``foreground``, ``background``, ``roi`` (any may be absent or
            empty) and optionally ``slice``.
        n_slices: slices of the sequence.
        height: slice (or region) height in the image's own pixels.
        width: slice (or region) width in the image's own pixels.
        region: the region the model sees (clicks are shifted by its location), or None.
        scale: ``(x, y)`` factors from the image's own pixels (where clicks are given and checked) to
            the pixels the network sees: ``working size / native size`` when the bundle resamples the
            image to its ``model_mpp_um``.

    Returns:
        ``(prompts, prompted_slices)``: ``prompts`` holds ``point_coords`` ``[1, N, P, 2]`` and
        ``point_labels`` ``[1, N, P]`` when there are clicks, ``boxes`` ``[1, N, 4]`` (NaN rows for
        none) when there is a box; ``prompted_slices`` the sorted slice indices with a prompt.

    Raises:
        ValueError: no click and no box, or a malformed entry, a click outside the image (or region) or
            a slice index out of range; the message names the request field and entry.
    """
    ox, oy = (region.x, region.y) if region is not None else (0, 0)
    default = _default_slice(request, n_slices)
    points: dict[int, list[tuple[float, float, int]]] = {}
    for field, label in (("foreground", 1), ("background", 0)):
        entries = request.get(field) or []
        if not isinstance(entries, (list, tuple)):
            raise ValueError(
                f"request '{field}' must be a list of [x, y] or [x, y, z] clicks, got {entries!r}"
            )
        for i, entry in enumerate(entries):
            where = f"request '{field}'[{i}] = {entry!r}"
            xyz = _numbers(entry, (2, 3), where)
            z = _slice_index(xyz[2], n_slices, where) if len(xyz) == 3 else default
            if z is None:
                raise _no_slice(where)
            x, y = xyz[0] - ox, xyz[1] - oy
            if not (0 <= x < width and 0 <= y < height):
                inside = "region" if region is not None else "image"
                raise ValueError(f"{where}: click lies outside the {width}x{height} px {inside}")
            points.setdefault(z, []).append((x, y, label))

    boxes: dict[int, list[float]] = {}
    roi = request.get("roi")
    if roi:
        where = f"request 'roi' = {roi!r}"
        values = _numbers(roi, (4, 6), where)
        if len(values) == 6:
            z0 = _slice_index(values[4], n_slices, where)
            z1 = max(int(values[5]), z0 + 1)
            if z1 > n_slices:
                raise ValueError(f"{where}: slice range end {z1} is beyond the image's {n_slices} slices")
            slices = range(z0, z1)
        elif default is None:
            raise _no_slice(where)
        else:
            slices = range(default, default + 1)
        x0, x1 = sorted((values[0] - ox, values[2] - ox))
        y0, y1 = sorted((values[1] - oy, values[3] - oy))
        x0, x1 = max(x0, 0.0), min(x1, float(width))
        y0, y1 = max(y0, 0.0), min(y1, float(height))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{where}: the box does not overlap the {width}x{height} px image")
        for z in slices:
            boxes[z] = [x0, y0, x1, y1]

    prompted = sorted(set(points) | set(boxes))
    if not prompted:
        raise ValueError(
            "interactive segmentation needs at least one click ('foreground'/'background') or a box ('roi')"
        )
    prompts: dict[str, Tensor] = {}
    if points:
        p = max(len(v) for v in points.values())
        coords = torch.zeros(1, n_slices, p, 2)
        labels = torch.full((1, n_slices, p), -1, dtype=torch.long)
        for z, clicks in points.items():
            for k, (x, y, lab) in enumerate(clicks):
                coords[0, z, k] = torch.tensor([x * scale[0], y * scale[1]])
                labels[0, z, k] = lab
        prompts.update(point_coords=coords, point_labels=labels)
    if boxes:
        box = torch.full((1, n_slices, 4), float("nan"))
        for z, corners in boxes.items():
            x0, y0, x1, y1 = corners
            box[0, z] = torch.tensor([x0 * scale[0], y0 * scale[1], x1 * scale[0], y1 * scale[1]])
        prompts["boxes"] = box
    return prompts, prompted
