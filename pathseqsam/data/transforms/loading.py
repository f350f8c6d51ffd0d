"""Loading transforms: choose the slices of a window, decode them at the working resolution, crop,
normalise for SAM2.

These turn a datalist item into the network's input ``[C, N, H, W]`` (channels, slices, height, width).
The network works at ONE physical resolution (the bundle's ``model_mpp_um``): :class:`LoadSequenced`
resamples every slice by ``mpp_um / model_mpp_um`` right after decoding (its own pixel size from
:mod:`pathseqsam.data.resolution`), training then takes the same random ``image_size`` crop from every
slice of a window (:class:`RandSequenceCropd`), and evaluation tiles the whole slice with a sliding
window; :class:`~pathseqsam.data.transforms.postprocessing.RestoreInputGridd` brings predictions back
to the input's own pixel grid. They are deterministic apart from the random window and crop.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from pathseqsam import SAM2_PIXEL_MEAN, SAM2_PIXEL_STD
from pathseqsam.data.datalist import validate_positions
from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.image_io import read_image_size, read_slice, to_binary_mask, to_rgb_float
from pathseqsam.data.resolution import check_mpp_um, resolve_mpp_um
from pathseqsam.data.stacks import probe_stack, read_stack_slices

__all__ = [
    "SEQUENCE_KEYS",
    "LoadSequenced",
    "NormalizeSAM2d",
    "RandSequenceCropd",
    "RandSequenceWindowd",
    "ResizeSequenced",
    "resize_sequence_image",
    "resize_sequence_mask",
    "working_size",
]

# Keys holding one entry per slice (first axis), sliced together with the images by windows.
SEQUENCE_KEYS = ("positions_um", "positions", "degraded", "slice_index", "slice_names", "original_size")


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    if len(size) != 2:
        raise ValueError(f"spatial_size must be an int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def resize_sequence_image(image: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize ``[C, N, H, W]`` images with antialiased bilinear interpolation (no-op if already sized).

    Args:
        image: float tensor ``[C, N, H, W]``.
        size: target ``H = W`` or ``(H, W)``.

    Returns:
        float tensor ``[C, N, h, w]``.
    """
    h, w = _size2(size)
    if tuple(image.shape[-2:]) == (h, w):
        return image
    x = image.permute(1, 0, 2, 3).float()
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp_(0.0, 1.0).permute(1, 0, 2, 3).contiguous()


def resize_sequence_mask(mask: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Resize ``[C, N, H, W]`` binary masks and keep them binary.

    Shrinking averages each output pixel's footprint and keeps it when at least half is foreground
    (fairer to thin structures and less aliased than nearest); enlarging uses nearest.

    Args:
        mask: tensor ``[C, N, H, W]`` with values in {0, 1}.
        size: target ``H = W`` or ``(H, W)``.

    Returns:
        float tensor ``[C, N, h, w]`` in {0, 1}.
    """
    h, w = _size2(size)
    if tuple(mask.shape[-2:]) == (h, w):
        return mask.float()
    x = mask.permute(1, 0, 2, 3).float()
    if h <= x.shape[-2] and w <= x.shape[-1]:
        x = (F.adaptive_avg_pool2d(x, (h, w)) >= 0.5).float()
    else:
        x = F.interpolate(x, size=(h, w), mode="nearest")
    return x.permute(1, 0, 2, 3).contiguous()


def working_size(size: Sequence[int], scale: float) -> tuple[int, int]:
    """``(height, width)`` of a slice of ``size`` pixels resampled by ``scale`` (at least 1 pixel).

    Args:
        size: ``(height, width)`` at the input's own pixel size.
        scale: ``mpp_um / model_mpp_um``.

    Returns:
        ``(round(height * scale), round(width * scale))``.
    """
    return max(1, round(int(size[0]) * scale)), max(1, round(int(size[1]) * scale))


def _sequence_length(d: Mapping[Hashable, Any], keys: Sequence[Hashable], z_spacing_um: float | None) -> int:
    for key in keys:
        value = d.get(key)
        if isinstance(value, (list, tuple)):
            return len(value)
        if isinstance(value, (torch.Tensor, np.ndarray)):
            return int(value.shape[1])
    for key in ("slice_index", "positions_um", "positions"):
        if key in d:
            return len(d[key])
    for key in keys:
        if isinstance(d.get(key), (str, Path)):
            return probe_stack(
                d[key], z_spacing_um=z_spacing_um if z_spacing_um is not None else 1.0
            ).n_slices
    raise SequenceDataError(f"cannot tell the sequence length: none of {list(keys)} holds slices or a stack")


def _take(value: Any, idx: np.ndarray, channel_first: bool) -> Any:
    if isinstance(value, torch.Tensor):
        index = torch.as_tensor(idx, dtype=torch.long)
        return value.index_select(1 if channel_first else 0, index)
    if isinstance(value, np.ndarray):
        return np.take(value, idx, axis=1 if channel_first else 0)
    if isinstance(value, (list, tuple)):
        return [value[i] for i in idx]
    return value


class RandSequenceWindowd(Randomizable, MapTransform):
    """Keep a random window of ``window`` ordered slices (optionally every ``stride``-th slice).

    Works before loading (lists of paths, ``positions_um``; for a stack path the chosen slices go to
    ``slice_index`` and :class:`LoadSequenced` decodes only those) and after loading (``[C, N, H, W]``
    tensors and the per-slice keys in :data:`SEQUENCE_KEYS`). Order is kept, so is every slice's
    position. A sequence shorter than the window is kept whole (with a warning): batch such
    sequences with ``batch_size=1``.

    Args:
        keys: image-like keys (path lists, stack paths or ``[C, N, H, W]`` arrays).
        window: number of slices T.
        max_stride: the stride is drawn from ``1..max_stride`` (capped so the window fits); >1 shows
            the model larger gaps between slices.
        sequence_keys: per-slice keys sliced along their first axis.
        z_spacing_um: passed to the stack probe when a stack's length must be read from its header.
        allow_missing_keys: don't raise when a key is absent (e.g. no label at inference).
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        window: int = 8,
        max_stride: int = 1,
        sequence_keys: Sequence[str] = SEQUENCE_KEYS,
        z_spacing_um: float | None = None,
        allow_missing_keys: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if window < 1 or max_stride < 1:
            raise ValueError(f"window and max_stride must be >= 1, got {window} and {max_stride}")
        self.window = int(window)
        self.max_stride = int(max_stride)
        self.sequence_keys = tuple(sequence_keys)
        self.z_spacing_um = z_spacing_um
        self._start = 0
        self._stride = 1

    def randomize(self, n: int) -> None:
        """Draw the stride and the start for a sequence of ``n`` slices."""
        fit = max(1, (n - 1) // max(1, self.window - 1)) if self.window > 1 else self.max_stride
        self._stride = int(self.R.randint(1, min(self.max_stride, fit) + 1))
        span = (self.window - 1) * self._stride + 1
        self._start = int(self.R.randint(0, n - span + 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        n = _sequence_length(d, self.keys, self.z_spacing_um)
        if n <= self.window:
            if n < self.window:
                warnings.warn(
                    f"case {d.get('case')!r}: {n} slices, fewer than the window ({self.window}); keeping all",
                    stacklevel=2,
                )
            self.randomize(max(n, self.window))  # keep the random stream in step
            return d
        self.randomize(n)
        idx = np.arange(self._start, self._start + self.window * self._stride, self._stride)
        base = np.asarray(d["slice_index"]) if "slice_index" in d else np.arange(n)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, (str, Path)):
                continue  # a stack: slice_index below tells the loader which slices to decode
            d[key] = _take(value, idx, channel_first=isinstance(value, (torch.Tensor, np.ndarray)))
        for key in self.sequence_keys:
            if key in d and key != "slice_index":
                d[key] = _take(d[key], idx, channel_first=False)
        picked = base[idx]
        d["slice_index"] = (
            torch.as_tensor(picked, dtype=torch.long)
            if isinstance(d.get("slice_index"), torch.Tensor)
            else picked.tolist()
        )
        return d


class LoadSequenced(MapTransform):
    """Decode a sequence into ``image [3, N, H, W]`` (RGB in [0, 1]) and ``label [1, N, H, W]`` ({0, 1}).

    ``keys[0]`` is the image key; any further keys are masks. Each value is a list of slice files or
    one stack file; a list entry may also be a slice already in memory (a ``numpy`` array, e.g. a
    region read from a whole-slide image), which carries no metadata: give the item's ``mpp_um``. Grayscale, RGBA and 16-bit inputs are converted and masks binarised as described in
    :mod:`pathseqsam.data.image_io`.

    With ``model_mpp_um`` (the bundle's setting) every slice is resampled right after decoding by
    ``mpp_um / model_mpp_um`` (images: antialiased bilinear; masks: area fraction >= 0.5 when
    shrinking, nearest when enlarging), so the network always sees the same micrometres per pixel;
    JPEGs are decoded at a reduced scale when possible, so a long case of 2048 px patches never sits in
    memory at full size. The input's own ``mpp_um`` comes from the item's ``mpp_um`` field, else the
    file's metadata, else the ``mpp_um`` fallback, else an error that says how to give it
    (:func:`pathseqsam.data.resolution.resolve_mpp_um`). Keys in ``native_keys`` (validation: the
    ground truth) are read at the input's own pixel grid, so metrics are computed there.
    ``spatial_size`` (resize every slice to a fixed number of pixels) is the older, scale-blind
    alternative, kept for pictures and tools; it cannot be combined with ``model_mpp_um``.

    Adds ``positions`` (float32 ``[N, D]`` um, from ``positions_um``, else from the stack header, else
    NaN ``[N, 1]``; also NaN for a stack whose item says ``spacing_source: "unknown"``), ``slice_names``
    (file names, or ``<stack>_z0007``), ``slice_index`` (int64 ``[N]`` index of each slice in the full
    sequence), ``original_size`` (int64 ``[N, 2]`` height, width at the input's own pixel grid),
    ``mpp_um`` (float, when known) and turns ``degraded`` into an int64 tensor ``[N]``.
    ``positions_um`` is removed (``positions`` replaces it). Images and labels are plain
    ``torch.Tensor`` (no MetaTensor), metadata live in those keys.

    Args:
        keys: image key first, then mask keys.
        spatial_size: resize every slice to this ``H = W`` or ``(H, W)`` pixels; None keeps the size.
        mask_threshold: JPEG masks: fraction of the mask range above which a pixel is foreground
            (masks from lossless files: every non-zero value, see :mod:`pathseqsam.data.image_io`).
        positions_key: datalist key with positions in um.
        output_positions_key: key that receives the float32 tensor.
        z_spacing_um: fallback z-spacing for stacks without spacing metadata.
        assume_isotropic: TIFF stacks: take z-spacing from the in-plane resolution as a last resort.
        allow_missing_keys: allow items without a label (inference).
        model_mpp_um: the working resolution (micrometres per pixel the network sees); None: no
            resampling.
        mpp_um: pixel size of inputs that carry none (no datalist field, no file metadata).
        native_keys: keys read at the input's own pixel grid (not resampled).

    Raises:
        ValueError: both ``spatial_size`` and ``model_mpp_um``, or a bad setting.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        spatial_size: int | Sequence[int] | None = None,
        mask_threshold: float = 0.5,
        positions_key: str = "positions_um",
        output_positions_key: str = "positions",
        z_spacing_um: float | None = None,
        assume_isotropic: bool = False,
        allow_missing_keys: bool = True,
        model_mpp_um: float | None = None,
        mpp_um: float | None = None,
        native_keys: KeysCollection = (),
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if spatial_size is not None and model_mpp_um is not None:
            raise ValueError(
                "LoadSequenced: give either model_mpp_um (resample to a physical resolution) or "
                "spatial_size (resize to a pixel count), not both"
            )
        self.spatial_size = None if spatial_size is None else _size2(spatial_size)
        if not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold}")
        self.mask_threshold = float(mask_threshold)
        self.positions_key = positions_key
        self.output_positions_key = output_positions_key
        self.z_spacing_um = z_spacing_um
        self.assume_isotropic = assume_isotropic
        self.model_mpp_um = None if model_mpp_um is None else check_mpp_um(model_mpp_um, "model_mpp_um")
        self.mpp_um = None if mpp_um is None else check_mpp_um(mpp_um, "the mpp_um setting")
        self.native_keys = {native_keys} if isinstance(native_keys, str) else set(native_keys)

    def _target(self, size: tuple[int, int], scale: float | None) -> tuple[int, int] | None:
        if scale is not None:
            return working_size(size, scale)
        return self.spatial_size

    def _read(
        self,
        value: Any,
        is_mask: bool,
        slice_index: list[int] | None,
        where: str,
        image_sizes: list[tuple[int, int]] | None = None,
        image_sources: list[str] | None = None,
        scale: float | None = None,
    ) -> tuple[torch.Tensor, list[tuple[int, int]], list[str], list[str]]:
        """Decode one key: returns ([C, N, H, W], original sizes, slice names, sources)."""
        if isinstance(value, (str, Path)):
            arr = read_stack_slices(value, slice_index)
            stem = Path(value).name.split(".")[0]
            index = slice_index if slice_index is not None else list(range(len(arr)))
            slices = [(arr[k], (int(arr.shape[1]), int(arr.shape[2]))) for k in range(len(arr))]
            names = [f"{stem}_z{i:04d}" for i in index]
            sources = [f"{value}#{i}" for i in index]
        elif isinstance(value, (list, tuple)) and value:
            slices = []
            for p in value:
                if isinstance(p, np.ndarray):  # a slice already in memory (a region of a slide)
                    slices.append((p, (int(p.shape[0]), int(p.shape[1]))))
                    continue
                # JPEGs decode at a reduced scale when the target is known from the header
                target = self._target(read_image_size(p), scale) if scale is not None else self.spatial_size
                slices.append(read_slice(p, target))
            in_memory = [isinstance(p, np.ndarray) for p in value]
            names = [f"{where}#{i}" if m else Path(p).name for i, (p, m) in enumerate(zip(value, in_memory))]
            sources = [n if m else str(p) for p, n, m in zip(value, names, in_memory)]
        else:
            raise SequenceDataError(
                f"{where}: expected a stack path or a non-empty list of slice paths, got {value!r}"
            )
        if image_sizes is not None and len(slices) != len(image_sizes):
            raise SequenceDataError(f"{where}: {len(slices)} mask slices for {len(image_sizes)} image slices")
        out, sizes = [], []
        for k, ((arr, size), source) in enumerate(zip(slices, sources)):
            if image_sizes is not None and image_sources is not None and size != image_sizes[k]:
                (mh, mw), (ih, iw) = size, image_sizes[k]
                raise SequenceDataError(
                    f"{source}: mask is {mw}x{mh} px but image {image_sources[k]} is {iw}x{ih} px; expected equal sizes"
                )
            if is_mask:
                t = torch.from_numpy(to_binary_mask(arr, self.mask_threshold, source).astype(np.float32))[
                    None
                ]
            else:
                t = torch.from_numpy(to_rgb_float(arr, source)).permute(2, 0, 1)
            target = self._target(size, scale)
            if target is not None:
                t = t[:, None]
                t = resize_sequence_mask(t, target) if is_mask else resize_sequence_image(t, target)
                t = t[:, 0]
            if out and t.shape[-2:] != out[0].shape[-2:]:
                raise SequenceDataError(
                    f"{source}: slice is {size[1]}x{size[0]} px but {sources[0]} is "
                    f"{sizes[0][1]}x{sizes[0][0]} px; expected slices of one size within a sequence "
                    "(or set spatial_size to resize them to one)"
                )
            out.append(t)
            sizes.append(size)
        return torch.stack(out, dim=1).contiguous(), sizes, names, sources

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        where = f"case {d.get('case')!r}"
        slice_index = d.get("slice_index")
        if isinstance(slice_index, torch.Tensor):
            slice_index = slice_index.tolist()
        keys = list(self.key_iterator(d))
        image_key = self.keys[0]
        if image_key not in keys:
            raise SequenceDataError(f"{where}: no {image_key!r} in the item (keys {sorted(map(str, d))})")
        image_value = d[image_key]
        scale = None
        if self.model_mpp_um is not None:
            first = image_value[0] if isinstance(image_value, (list, tuple)) and image_value else image_value
            first = None if isinstance(first, np.ndarray) else first  # in memory: no metadata
            mpp, _ = resolve_mpp_um(d.get("mpp_um"), first, self.mpp_um, where)
            d["mpp_um"] = mpp
            scale = mpp / self.model_mpp_um
        image, sizes, names, sources = self._read(image_value, False, slice_index, where, scale=scale)
        n = image.shape[1]
        d[image_key] = image
        for key in keys[1:]:
            if d[key] is None:
                del d[key]
                continue
            key_scale = None if key in self.native_keys else scale
            if key in self.native_keys and self.spatial_size is not None:
                raise ValueError(f"LoadSequenced: native_keys {key!r} needs model_mpp_um, not spatial_size")
            d[key] = self._read(d[key], True, slice_index, where, sizes, sources, scale=key_scale)[0]

        d["slice_names"] = names
        d["slice_index"] = torch.as_tensor(
            slice_index if slice_index is not None else range(n), dtype=torch.long
        )
        d["original_size"] = torch.as_tensor(sizes, dtype=torch.long)
        d[self.output_positions_key] = self._positions(d, image_value, slice_index, n, names, where)
        if "degraded" in d:
            degraded = torch.as_tensor(np.asarray(d["degraded"]), dtype=torch.long)
            if degraded.shape != (n,):
                raise SequenceDataError(f"{where}: 'degraded' has {degraded.numel()} flags for {n} slices")
            d["degraded"] = degraded
        return d

    def _positions(
        self, d: dict, image_value: Any, slice_index: list[int] | None, n: int, names: list[str], where: str
    ) -> torch.Tensor:
        if d.get(self.positions_key) is not None:
            arr = validate_positions(d.pop(self.positions_key), n, where, names)
        elif isinstance(image_value, (str, Path)) and d.get("spacing_source") != "unknown":
            info = probe_stack(image_value, self.z_spacing_um, self.assume_isotropic)
            z = np.asarray(info.z_positions_um, dtype=np.float64)
            arr = (z if slice_index is None else z[np.asarray(slice_index, dtype=np.int64)])[:, None]
        else:
            d.pop(self.positions_key, None)
            arr = np.full((n, 1), np.nan)  # unknown: the network estimates distances from features
        return torch.as_tensor(arr, dtype=torch.float32)


class RandSequenceCropd(Randomizable, MapTransform):
    """The same random ``roi_size`` crop from every slice of a loaded sequence (training at one scale).

    Slices smaller than the crop are padded first, centred: images with ``image_pad`` (1.0, white
    glass, on RGB in [0, 1]) and masks with 0. Apply after :class:`LoadSequenced` (working
    resolution) and before the augmentation and normalisation.

    Args:
        keys: image key first, then mask keys; tensors ``[C, N, H, W]``.
        roi_size: crop ``H = W`` or ``(H, W)``: the bundle's ``image_size``.
        image_pad: pad value of the image key.
        allow_missing_keys: allow items without a label.
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        roi_size: int | Sequence[int] = 256,
        image_pad: float = 1.0,
        allow_missing_keys: bool = True,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.roi_size = _size2(roi_size)
        self.image_pad = float(image_pad)
        self._y = self._x = 0

    def randomize(self, size: tuple[int, int]) -> None:
        """Draw the crop's top-left corner in a (padded) slice of ``size`` = ``(H, W)``."""
        self._y = int(self.R.randint(0, size[0] - self.roi_size[0] + 1))
        self._x = int(self.R.randint(0, size[1] - self.roi_size[1] + 1))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        h, w = (int(s) for s in torch.as_tensor(d[keys[0]]).shape[-2:])
        ph, pw = max(0, self.roi_size[0] - h), max(0, self.roi_size[1] - w)
        self.randomize((h + ph, w + pw))
        (rh, rw), y, x = self.roi_size, self._y, self._x
        for key in keys:
            t = torch.as_tensor(d[key])
            if tuple(t.shape[-2:]) != (h, w):
                raise SequenceDataError(
                    f"{key!r} is {tuple(t.shape[-2:])} px but {keys[0]!r} is {(h, w)}; expected equal sizes"
                )
            if ph or pw:
                value = self.image_pad if key == self.keys[0] else 0.0
                t = F.pad(t.float(), (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)
            d[key] = t[..., y : y + rh, x : x + rw].contiguous()
        return d


class ResizeSequenced(MapTransform):
    """Resize loaded ``[C, N, H, W]`` tensors: the first key as image (antialiased bilinear), the
    rest as binary masks (see :func:`resize_sequence_mask`).

    Args:
        keys: image key first, then mask keys.
        spatial_size: ``H = W`` or ``(H, W)``.
        allow_missing_keys: allow items without a label.
    """

    def __init__(
        self, keys: KeysCollection, spatial_size: int | Sequence[int], allow_missing_keys: bool = True
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = _size2(spatial_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            fn = resize_sequence_image if key == self.keys[0] else resize_sequence_mask
            d[key] = fn(torch.as_tensor(d[key]), self.spatial_size)
        return d


class NormalizeSAM2d(MapTransform):
    """``(x - mean) / std`` per channel with SAM2's ImageNet statistics, on RGB in [0, 1].

    Args:
        keys: image keys, ``[3, N, H, W]`` float tensors.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mean = torch.tensor(SAM2_PIXEL_MEAN, dtype=torch.float32)[:, None, None, None]
        self.std = torch.tensor(SAM2_PIXEL_STD, dtype=torch.float32)[:, None, None, None]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key]).float()
            if x.shape[0] != 3:
                raise SequenceDataError(
                    f"{key!r}: expected RGB [3, N, H, W] before normalisation, got {tuple(x.shape)}"
                )
            d[key] = ((x - self.mean) / self.std).contiguous()
        return d
