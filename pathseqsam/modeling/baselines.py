"""2D baselines of the paper's Table 1, in PathSeqSAM's sequence harness.

* nnU-Net-style: MONAI ``DynUNet`` with nnU-Net's 2D topology rules
  (:func:`nnunet_kernels_strides`, :func:`nnunet_filters`);
* Swin-Unet stand-in: MONAI ``SwinUNETR`` with ``spatial_dims=2`` (a Swin-Transformer encoder with
  a U-shaped decoder; Swin-Unet itself is not in MONAI).

Both come wrapped in :class:`~pathseqsam.modeling.slicewise.SliceWise`, so they take the same
``[B, 3, N, H, W]`` batches as PathSeqSAM and return ``[B, 1, N, H, W]`` logits. ``width="tiny"``
gives CPU-sized networks (about the size of the tiny SAM2) for tests and demos; ``"full"`` the
published widths (nnU-Net 2D: 32 filters doubling up to 512; SwinUNETR: feature size 48).
"""

from __future__ import annotations

from collections.abc import Sequence

from pathseqsam.modeling.resolution import attach_model_mpp
from pathseqsam.modeling.slicewise import SliceWise

__all__ = ["BASELINE_WIDTHS", "build_dynunet", "build_swinunetr", "nnunet_filters", "nnunet_kernels_strides"]

# width -> (DynUNet base filters, DynUNet max filters, SwinUNETR feature size)
BASELINE_WIDTHS = {"tiny": (8, 64, 12), "full": (32, 512, 48)}


def nnunet_kernels_strides(
    patch_size: Sequence[int], spacing: Sequence[float], min_size: int = 8
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's rule for convolution kernels and strides of a U-Net on patches of ``patch_size``.

    Going down one level, an axis is downsampled (stride 2) when its spacing is at most twice the
    finest spacing and it still has at least ``min_size`` voxels; its kernel is 3 under the same
    spacing condition, else 1 (very anisotropic axes are not mixed early). Downsampling stops when
    no axis can be halved any more. The first level has stride 1 and the bottleneck a 3 kernel.

    Args:
        patch_size: network input size per spatial axis (e.g. ``(256, 256)``).
        spacing: physical spacing per axis (any unit; only ratios matter).
        min_size: an axis smaller than this is not downsampled further (nnU-Net: 8, i.e. the
            bottleneck is 4-7 voxels wide).

    Returns:
        ``(kernels, strides)``: one ``[k_axis, ...]`` and one ``[s_axis, ...]`` per level, as
        ``DynUNet(kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:])`` takes them.

    Raises:
        ValueError: mismatched lengths, non-positive values, or an axis that a stride of 2 does not
            divide (the patch size must be divisible by ``2 ** levels`` along downsampled axes).
    """
    sizes = [int(s) for s in patch_size]
    spacings = [float(s) for s in spacing]
    if len(sizes) != len(spacings) or not sizes:
        raise ValueError(f"patch_size {tuple(patch_size)} and spacing {tuple(spacing)} need the same length")
    if min(sizes) < 1 or min(spacings) <= 0:
        raise ValueError(
            f"patch_size and spacing must be positive, got {tuple(patch_size)}, {tuple(spacing)}"
        )
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(sizes)]
    while True:
        finest = min(spacings)
        ratios = [sp / finest for sp in spacings]
        stride = [2 if r <= 2 and size >= min_size else 1 for r, size in zip(ratios, sizes)]
        if all(s == 1 for s in stride):
            break
        for axis, (size, s) in enumerate(zip(sizes, stride)):
            if size % s:
                raise ValueError(
                    f"patch_size {tuple(patch_size)}: axis {axis} has {size} voxels at level {len(kernels)}, "
                    "not divisible by 2; use a patch size divisible by a power of two"
                )
        kernels.append([3 if r <= 2 else 1 for r in ratios])
        strides.append(stride)
        sizes = [size // s for size, s in zip(sizes, stride)]
        spacings = [sp * s for sp, s in zip(spacings, stride)]
    kernels.append([3] * len(sizes))
    return kernels, strides


def nnunet_filters(levels: int, base: int = 32, max_filters: int = 512) -> list[int]:
    """nnU-Net's feature widths: ``base`` doubling per level, capped at ``max_filters`` (2D: 512).

    Args:
        levels: number of resolution levels (``len(strides)``).
        base: filters at full resolution.
        max_filters: cap.

    Returns:
        ``[min(base * 2**i, max_filters) for i in range(levels)]``.
    """
    if levels < 1 or base < 1 or max_filters < base:
        raise ValueError(
            f"need levels >= 1 and 1 <= base <= max_filters, got {levels}, {base}, {max_filters}"
        )
    return [min(base * 2**i, max_filters) for i in range(levels)]


def _width(width: str) -> tuple[int, int, int]:
    if width not in BASELINE_WIDTHS:
        raise ValueError(f"width must be one of {sorted(BASELINE_WIDTHS)}, got {width!r}")
    return BASELINE_WIDTHS[width]


def build_dynunet(
    image_size: int,
    width: str = "full",
    spacing: Sequence[float] = (1.0, 1.0),
    in_channels: int = 3,
    out_channels: int = 1,
    model_mpp_um: float | None = None,
) -> SliceWise:
    """nnU-Net-style 2D U-Net (MONAI ``DynUNet``) on ``image_size`` patches, applied per slice.

    Args:
        image_size: in-plane patch size (the bundle's ``image_size``).
        width: ``"tiny"`` (8 filters doubling to 64) or ``"full"`` (nnU-Net 2D: 32 to 512).
        spacing: in-plane pixel spacing (isotropic for pathology patches).
        in_channels: input channels (RGB).
        out_channels: output channels (one glomerulus logit).
        model_mpp_um: working resolution saved with the weights and checked on load (see
            :func:`pathseqsam.modeling.resolution.attach_model_mpp`); None: not recorded.

    Returns:
        The network wrapped in :class:`SliceWise`.
    """
    from monai.networks.nets import DynUNet

    base, max_filters, _ = _width(width)
    kernels, strides = nnunet_kernels_strides((image_size, image_size), spacing)
    net = DynUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=nnunet_filters(len(strides), base, max_filters),
        norm_name=("INSTANCE", {"affine": True}),
        res_block=False,
    )
    return _with_mpp(SliceWise(net), model_mpp_um)


def build_swinunetr(
    image_size: int,
    width: str = "full",
    in_channels: int = 3,
    out_channels: int = 1,
    model_mpp_um: float | None = None,
) -> SliceWise:
    """Swin-Transformer U-Net (MONAI ``SwinUNETR``, ``spatial_dims=2``), applied per slice.

    Args:
        image_size: in-plane patch size; must be divisible by 32 (five 2x patch merges).
        width: ``"tiny"`` (feature size 12) or ``"full"`` (48).
        in_channels: input channels (RGB).
        out_channels: output channels (one glomerulus logit).
        model_mpp_um: working resolution saved with the weights and checked on load; None: not recorded.

    Returns:
        The network wrapped in :class:`SliceWise`.
    """
    from monai.networks.nets import SwinUNETR

    if image_size % 32:
        raise ValueError(f"SwinUNETR needs image_size divisible by 32, got {image_size}")
    _, _, feature_size = _width(width)
    net = SwinUNETR(
        in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, spatial_dims=2
    )
    return _with_mpp(SliceWise(net), model_mpp_um)


def _with_mpp(net: SliceWise, model_mpp_um: float | None) -> SliceWise:
    return net if model_mpp_um is None else attach_model_mpp(net, model_mpp_um)
