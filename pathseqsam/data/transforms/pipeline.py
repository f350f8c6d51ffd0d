"""The standard transform chain of training and evaluation, as one ``Compose``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.transforms import Compose

from pathseqsam.data.transforms.augmentation import RandSequenceSpatiald, RandSliceStainJitterd
from pathseqsam.data.transforms.loading import (
    LoadSequenced,
    NormalizeSAM2d,
    RandSequenceCropd,
    RandSequenceWindowd,
)

__all__ = [
    "sequence_transforms",
]


def sequence_transforms(
    image_size: int | Sequence[int],
    train: bool,
    window: int | None = None,
    keys: Sequence[str] = ("image", "label"),
    mask_threshold: float = 0.5,
    max_stride: int = 1,
    spatial_aug: bool = True,
    stain_aug: bool = True,
    z_spacing_um: float | None = None,
    model_mpp_um: float | None = None,
    mpp_um: float | None = None,
) -> Compose:
    """The standard chain: [window] -> load -> [crop -> spatial aug -> stain jitter] -> normalise.

    With ``model_mpp_um`` (as the bundle): slices are loaded at that resolution, training crops
    ``image_size`` from them and evaluation keeps whole slices (labels on the input's grid). Without
    it: every slice is resized to ``image_size`` pixels (scale-blind; pictures and quick looks).

    Args:
        image_size: the model's ``image_size`` (int) or ``(H, W)``.
        train: add the random window (when ``window`` is set) and the augmentations.
        window: slices per training window; None or evaluation keeps whole sequences.
        keys: image key then label key(s).
        mask_threshold: see :class:`LoadSequenced`.
        max_stride: see :class:`RandSequenceWindowd`.
        spatial_aug: add :class:`RandSequenceSpatiald` (train only).
        stain_aug: add :class:`RandSliceStainJitterd` (train only).
        z_spacing_um: fallback spacing for stacks without metadata.
        model_mpp_um: the working resolution in um per pixel (see :class:`LoadSequenced`).
        mpp_um: pixel size of inputs that carry none.

    Returns:
        A ``monai.transforms.Compose``.
    """
    keys = list(keys)
    chain: list[Any] = []
    if train and window:
        chain.append(
            RandSequenceWindowd(keys, window=window, max_stride=max_stride, z_spacing_um=z_spacing_um)
        )
    if model_mpp_um is None:
        chain.append(
            LoadSequenced(
                keys, spatial_size=image_size, mask_threshold=mask_threshold, z_spacing_um=z_spacing_um
            )
        )
    else:
        chain.append(
            LoadSequenced(
                keys,
                mask_threshold=mask_threshold,
                z_spacing_um=z_spacing_um,
                model_mpp_um=model_mpp_um,
                mpp_um=mpp_um,
                native_keys=() if train else keys[1:],
            )
        )
        if train:
            chain.append(RandSequenceCropd(keys, roi_size=image_size))
    if train and spatial_aug:
        chain.append(RandSequenceSpatiald(keys))
    if train and stain_aug:
        chain.append(RandSliceStainJitterd(keys[0]))
    chain.append(NormalizeSAM2d(keys[0]))
    return Compose(chain)
