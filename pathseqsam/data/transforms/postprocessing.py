"""Post-processing of predicted masks, slice by slice (never across the slices of a stack)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from pathseqsam.data.errors import SequenceDataError

__all__ = [
    "EachSliced",
    "RemoveSmallRegions",
]


class RemoveSmallRegions:
    """Remove connected regions smaller than ``min_size`` pixels from a binary ``[C, H, W]`` slice.

    The operation of MONAI's ``RemoveSmallObjects`` (4-connected by default), done with scipy: MONAI's
    needs scikit-image, and importing its morphology made a two-process gloo evaluation abort at exit
    here ("terminate called without an active exception").

    Args:
        min_size: smallest region kept, in pixels.
        connectivity: 1 (edge neighbours) or 2 (also diagonal ones).
    """

    def __init__(self, min_size: int, connectivity: int = 1) -> None:
        if min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {min_size}")
        if connectivity not in (1, 2):
            raise ValueError(f"connectivity must be 1 or 2, got {connectivity}")
        self.min_size = int(min_size)
        self.connectivity = connectivity

    def __call__(self, img: Any) -> torch.Tensor:
        from scipy import ndimage

        x = torch.as_tensor(img)
        if x.ndim != 3:
            raise SequenceDataError(f"expected one slice [C, H, W], got shape {tuple(x.shape)}")
        fg = x.detach().cpu().numpy() > 0
        structure = ndimage.generate_binary_structure(2, self.connectivity)
        keep = np.zeros_like(fg)
        for c in range(fg.shape[0]):
            labels, count = ndimage.label(fg[c], structure)
            if count:
                large = np.bincount(labels.ravel()) >= self.min_size
                large[0] = False
                keep[c] = large[labels]
        return torch.as_tensor(keep, device=x.device).to(x.dtype)


class EachSliced(MapTransform):
    """Apply a 2D MONAI array transform to every slice of ``[C, N, H, W]`` data on its own.

    MONAI's morphology post-processing (``FillHoles``, ``KeepLargestConnectedComponent``, and
    :class:`RemoveSmallRegions` here) treats ``[C, N, H, W]`` as a 3D volume; serial sections are
    not a voxel grid (variable spacing, each section its own patch), so connectivity must stay within
    a slice.

    Args:
        keys: keys of ``[C, N, H, W]`` tensors (e.g. the binarised ``pred``).
        transform: a callable on ``[C, H, W]`` (e.g. ``RemoveSmallRegions(min_size=64)``).
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, transform: Any, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not callable(transform):
            raise TypeError(f"transform must be callable on [C, H, W] slices, got {type(transform).__name__}")
        self.transform = transform

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            if x.ndim != 4:
                raise SequenceDataError(f"{key!r}: expected [C, N, H, W], got shape {tuple(x.shape)}")
            slices = [torch.as_tensor(self.transform(x[:, n])) for n in range(x.shape[1])]
            out = torch.stack(slices, dim=1).to(dtype=torch.as_tensor(x).dtype)
            if isinstance(x, MetaTensor):
                out = MetaTensor(out, meta=x.meta, applied_operations=x.applied_operations)
            d[key] = out
        return d
