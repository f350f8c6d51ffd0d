"""Training augmentation of slice sequences: one spatial transform for all slices, stain jitter per slice."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

__all__ = [
    "RandSequenceSpatiald",
    "RandSliceStainJitterd",
]

# Stain matrix of Ruifrok & Johnston (rows: haematoxylin, eosin, DAB optical densities), as used by
# skimage.color.rgb2hed. For PAS the second stain is magenta rather than eosin; the jitter only needs
# a plausible, invertible basis in which to scale stain amounts.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


class RandSequenceSpatiald(Randomizable, MapTransform):
    """ONE random spatial transform applied to every slice of a sequence (and its masks).

    Draws flips, a multiple of 90 degrees (square images only), a rotation, an isotropic scale and a
    translation once per call, composes them into one affine and resamples every slice with it
    (images bilinear, masks nearest, reflection padding for both so they stay aligned).

    Args:
        keys: image key first, then mask keys; tensors ``[C, N, H, W]``.
        prob: probability of transforming at all.
        flip: draw horizontal and vertical flips (p = 0.5 each).
        rot90: draw a multiple of 90 degrees.
        rotate_range: rotation drawn uniformly in ``[-rotate_range, rotate_range]`` radians.
        scale_range: ``(low, high)`` isotropic zoom factors.
        translate_range: shift drawn in ``[-t, t]`` times the image size, per axis.
        allow_missing_keys: allow items without a label.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        prob: float = 1.0,
        flip: bool = True,
        rot90: bool = True,
        rotate_range: float = math.pi / 12,
        scale_range: tuple[float, float] = (0.9, 1.1),
        translate_range: float = 0.05,
        allow_missing_keys: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.prob = prob
        self.flip = flip
        self.rot90 = rot90
        self.rotate_range = rotate_range
        self.scale_range = tuple(scale_range)
        self.translate_range = translate_range
        self.matrix: np.ndarray | None = None  # last (output -> input) affine in pixel units, for tests

    def randomize(self, data: Any = None) -> None:
        """Draw one transform: sets ``self._params``."""
        self._do = self.R.rand() < self.prob
        self._params = {
            "flip_x": self.flip and self.R.rand() < 0.5,
            "flip_y": self.flip and self.R.rand() < 0.5,
            "k90": int(self.R.randint(0, 4)) if self.rot90 else 0,
            "angle": float(self.R.uniform(-self.rotate_range, self.rotate_range)),
            "scale": float(self.R.uniform(*self.scale_range)),
            "shift": self.R.uniform(-self.translate_range, self.translate_range, size=2),
        }

    def _matrix(self, h: int, w: int) -> np.ndarray:
        """3x3 map from output pixel offsets (from the centre, (x, y)) to input pixel offsets."""
        p = self._params
        k = p["k90"] if h == w else 0
        angle = p["angle"] + k * math.pi / 2
        c, s = math.cos(angle), math.sin(angle)
        m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) / p["scale"]
        m[2, 2] = 1.0
        m = m @ np.diag([-1.0 if p["flip_x"] else 1.0, -1.0 if p["flip_y"] else 1.0, 1.0])
        m[0, 2] = p["shift"][0] * w
        m[1, 2] = p["shift"][1] * h
        return m

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do:
            return d
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        h, w = (int(s) for s in torch.as_tensor(d[keys[0]]).shape[-2:])
        m = self._matrix(h, w)
        self.matrix = m
        # affine_grid works in normalised coordinates ([-1, 1] across each axis): conjugate by the
        # per-axis half sizes so rotations stay rotations on non-square images.
        scale = np.diag([w / 2.0, h / 2.0, 1.0])
        theta = torch.as_tensor((np.linalg.inv(scale) @ m @ scale)[:2], dtype=torch.float32)
        for key in keys:
            x = torch.as_tensor(d[key])
            n = x.shape[1]
            grid = F.affine_grid(theta.expand(n, 2, 3), [n, x.shape[0], h, w], align_corners=False)
            is_image = key == self.keys[0]
            y = F.grid_sample(
                x.permute(1, 0, 2, 3).float(),
                grid,
                mode="bilinear" if is_image else "nearest",
                padding_mode="reflection",
                align_corners=False,
            )
            d[key] = y.permute(1, 0, 2, 3).contiguous()
        return d


class RandSliceStainJitterd(Randomizable, MapTransform):
    """Independent stain and intensity jitter for EVERY slice (serial sections are stained apart).

    In optical density, each slice's stain amounts (HED basis) are scaled by ``U(1 - s, 1 + s)`` and
    shifted by ``U(-b, b)`` (Tellez et al., 2018), then brightness ``+U(-B, B)`` and contrast
    ``*U(1 - C, 1 + C)`` are applied. Input and output: RGB ``[3, N, H, W]`` in [0, 1] (apply before
    normalisation).

    Args:
        keys: image keys.
        prob: per-slice probability of jittering.
        stain_scale: s.
        stain_shift: b.
        brightness: B.
        contrast: C.
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        prob: float = 0.8,
        stain_scale: float = 0.1,
        stain_shift: float = 0.02,
        brightness: float = 0.05,
        contrast: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.prob = prob
        self.stain_scale = stain_scale
        self.stain_shift = stain_shift
        self.brightness = brightness
        self.contrast = contrast

    def randomize(self, n: int) -> None:
        """Draw parameters for ``n`` slices: sets ``self._params``."""
        self._params = {
            "do": self.R.rand(n) < self.prob,
            "scale": self.R.uniform(1 - self.stain_scale, 1 + self.stain_scale, size=(n, 3)),
            "shift": self.R.uniform(-self.stain_shift, self.stain_shift, size=(n, 3)),
            "brightness": self.R.uniform(-self.brightness, self.brightness, size=n),
            "contrast": self.R.uniform(1 - self.contrast, 1 + self.contrast, size=n),
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key]).float()
            n = x.shape[1]
            self.randomize(n)
            p = self._params
            if not p["do"].any():
                continue
            od = -torch.log(x.clamp(min=1.0 / 255.0)).double()  # [3, N, H, W]
            conc = torch.einsum("cnhw,cs->snhw", od, _HED_FROM_RGB)
            scale = torch.as_tensor(p["scale"].T, dtype=torch.float64)[:, :, None, None]
            shift = torch.as_tensor(p["shift"].T, dtype=torch.float64)[:, :, None, None]
            od = torch.einsum("snhw,sc->cnhw", conc * scale + shift, _RGB_FROM_HED)
            y = torch.exp(-od).float()
            mean = y.mean(dim=(0, 2, 3), keepdim=True)
            contrast = torch.as_tensor(p["contrast"], dtype=torch.float32)[None, :, None, None]
            bright = torch.as_tensor(p["brightness"], dtype=torch.float32)[None, :, None, None]
            y = ((y - mean) * contrast + mean + bright).clamp_(0.0, 1.0)
            keep = torch.as_tensor(p["do"])[None, :, None, None]
            d[key] = torch.where(keep, y, x)
        return d
