"""Post-processing of predictions: back to the input's own pixel grid, then per-slice mask clean-up
(never across the slices of a stack), with object sizes in square micrometres."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from pathseqsam.data.errors import SequenceDataError

__all__ = [
    "EachSliced",
    "RemoveSmallRegions",
    "RemoveSmallRegionsd",
    "RestoreInputGridd",
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


class RestoreInputGridd(MapTransform):
    """Resample ``[C, N, h, w]`` tensors from the working resolution back to the input's own pixel grid.

    The inverse of :class:`~pathseqsam.data.transforms.loading.LoadSequenced`'s resampling: every
    slice goes to its ``original_size`` (``[N, 2]`` height, width, recorded by the loader). Apply to
    the probabilities (after the sigmoid, before the threshold: bilinear interpolation of
    probabilities gives smoother mask edges than enlarging a binary mask) and to the image (for
    overlays); metrics and saved masks are then on the input's grid, comparable across resolutions.

    Args:
        keys: tensor keys to resample.
        size_key: key of the ``[N, 2]`` original sizes.
        mode: ``"bilinear"`` (antialiased when shrinking) or ``"nearest"`` (label images).
        allow_missing_keys: skip absent keys (e.g. no image).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        size_key: str = "original_size",
        mode: str = "bilinear",
        allow_missing_keys: bool = True,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if mode not in ("bilinear", "nearest"):
            raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
        self.size_key, self.mode = size_key, mode

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.size_key not in d:
            raise SequenceDataError(
                f"no {self.size_key!r} in the item: RestoreInputGridd needs the sizes LoadSequenced records"
            )
        sizes = torch.as_tensor(d[self.size_key]).reshape(-1, 2)
        if not bool((sizes == sizes[0]).all()):
            raise SequenceDataError(f"slices of one sequence have different sizes {sizes.tolist()}")
        h, w = (int(v) for v in sizes[0])
        for key in self.key_iterator(d):
            x = d[key]
            if x.ndim != 4:
                raise SequenceDataError(f"{key!r}: expected [C, N, H, W], got shape {tuple(x.shape)}")
            if tuple(x.shape[-2:]) == (h, w):
                continue
            y = torch.as_tensor(x).permute(1, 0, 2, 3).float()
            if self.mode == "nearest":
                y = F.interpolate(y, size=(h, w), mode="nearest")
            else:
                shrink = h < y.shape[-2] or w < y.shape[-1]
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
            out = y.permute(1, 0, 2, 3).contiguous().to(torch.as_tensor(x).dtype)
            d[key] = MetaTensor(out, meta=x.meta) if isinstance(x, MetaTensor) else out
        return d


class RemoveSmallRegionsd(MapTransform):
    """Remove regions smaller than ``min_area_um2`` square micrometres from every slice of binary masks.

    The pixel threshold is ``ceil(min_area_um2 / mpp_um^2)`` with the item's own ``mpp_um`` (apply
    after :class:`RestoreInputGridd`, on the input's grid), so one setting means the same tissue at
    every resolution.

    Args:
        keys: keys of binary ``[C, N, H, W]`` masks.
        min_area_um2: smallest region kept, in um^2 (0 keeps everything).
        mpp_key: key of the item's pixel size in micrometres (set by ``LoadSequenced``).
        connectivity: 1 (edge neighbours) or 2 (also diagonal ones).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        min_area_um2: float = 0.0,
        mpp_key: str = "mpp_um",
        connectivity: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not (math.isfinite(min_area_um2) and min_area_um2 >= 0):
            raise ValueError(f"min_area_um2 must be >= 0 square micrometres, got {min_area_um2}")
        self.min_area_um2, self.mpp_key, self.connectivity = float(min_area_um2), mpp_key, connectivity

    def min_pixels(self, mpp_um: float) -> int:
        """The threshold in pixels of ``mpp_um`` micrometres."""
        return math.ceil(self.min_area_um2 / (float(mpp_um) ** 2) - 1e-9)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if d.get(self.mpp_key) is None:
            raise SequenceDataError(
                f"no {self.mpp_key!r} in the item: RemoveSmallRegionsd needs the pixel size (LoadSequenced "
                "with model_mpp_um records it)"
            )
        transform = RemoveSmallRegions(
            self.min_pixels(float(torch.as_tensor(d[self.mpp_key]))), self.connectivity
        )
        return EachSliced(self.keys, transform, self.allow_missing_keys)(d)
