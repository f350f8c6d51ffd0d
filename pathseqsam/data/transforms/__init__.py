"""MONAI dictionary transforms for slice sequences (``[C, N, H, W]``: channels, slices, height, width).

A datalist item (see :mod:`pathseqsam.data.datalist`) goes through, typically::

    RandSequenceWindowd   pick T consecutive slices BEFORE decoding (long KPIs cases stay cheap)
    LoadSequenced         decode and resample to model_mpp_um -> image [3, N, H, W] in [0, 1],
                          label [1, N, H, W] in {0, 1}, positions [N, D] (um), slice_names,
                          slice_index, original_size, mpp_um
    RandSequenceCropd     the same random image_size crop from every slice (training)
    RandSequenceSpatiald  ONE flip/rot90/affine for every slice of the sequence (image and label)
    RandSliceStainJitterd per-slice H&E/PAS stain (HED-space), brightness and contrast jitter
    NormalizeSAM2d        (x - SAM2_PIXEL_MEAN) / SAM2_PIXEL_STD

:func:`sequence_transforms` returns that chain as a ``monai.transforms.Compose``; every class can also
be named in a bundle config as ``"_target_": "pathseqsam.data.transforms.LoadSequenced"`` etc.

Validation and inference keep whole slices at the working resolution (the sliding window tiles
them); postprocessing's :class:`RestoreInputGridd` brings probabilities back to the input's own grid
and :class:`RemoveSmallRegionsd` drops objects under a size in um^2.

Modules, by stage as in MONAI: :mod:`.loading` (window, decode, resample, crop, normalise),
:mod:`.augmentation` (random spatial and stain transforms), :mod:`.postprocessing` (per-slice mask
clean-up), :mod:`.pipeline` (the chain); everything is re-exported here.

Positions are left untouched by the spatial augmentation: a flip or rotation of every patch about its
own centre keeps all patch-to-patch distances, which is what the network uses. They are sliced with
the sequence by the window and batch with MONAI's ``list_data_collate`` to ``[B, N, D]`` (sequences in
one batch must have the same N and D; windows give that).
"""

from __future__ import annotations

from pathseqsam.data.transforms.augmentation import RandSequenceSpatiald, RandSliceStainJitterd
from pathseqsam.data.transforms.loading import (
    SEQUENCE_KEYS,
    LoadSequenced,
    NormalizeSAM2d,
    RandSequenceCropd,
    RandSequenceWindowd,
    ResizeSequenced,
    resize_sequence_image,
    resize_sequence_mask,
    working_size,
)
from pathseqsam.data.transforms.pipeline import sequence_transforms
from pathseqsam.data.transforms.postprocessing import (
    EachSliced,
    RemoveSmallRegions,
    RemoveSmallRegionsd,
    RestoreInputGridd,
)

__all__ = [
    "SEQUENCE_KEYS",
    "EachSliced",
    "LoadSequenced",
    "NormalizeSAM2d",
    "RandSequenceCropd",
    "RandSequenceSpatiald",
    "RandSequenceWindowd",
    "RandSliceStainJitterd",
    "RemoveSmallRegions",
    "RemoveSmallRegionsd",
    "ResizeSequenced",
    "RestoreInputGridd",
    "resize_sequence_image",
    "resize_sequence_mask",
    "sequence_transforms",
    "working_size",
]
