"""Masks by file format: lossless label images keep every non-zero label; JPEG keeps its threshold; CMYK."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pathseqsam.data.image_io import read_slice, to_binary_mask
from pathseqsam.data.stacks import save_stack
from pathseqsam.data.transforms import LoadSequenced


def _instances(dtype, ids) -> np.ndarray:
    """64x64 label image: one 16x16 square per instance id, background 0."""
    mask = np.zeros((64, 64), dtype=dtype)
    for k, label in enumerate(ids):
        mask[4 + 20 * (k % 3) : 20 + 20 * (k % 3), 4 + 20 * (k // 3) : 20 + 20 * (k // 3)] = label
    return mask


def _loaded_label(image_value, label_value) -> np.ndarray:
    d = LoadSequenced(["image", "label"])({"image": image_value, "label": label_value})
    return d["label"][0].numpy()


@pytest.mark.parametrize(
    ("dtype", "ids"),
    [(np.uint8, [1, 2, 3, 4, 5]), (np.uint16, [1, 300, 40000]), (np.uint8, [255]), (np.uint8, [1])],
)
def test_png_label_images_keep_every_instance(tmp_path, dtype, ids):
    mask = _instances(dtype, ids)
    Image.fromarray(mask).save(tmp_path / "m.png")
    arr, _ = read_slice(tmp_path / "m.png")
    assert arr.dtype == dtype and set(np.unique(arr).tolist()) == {0, *ids}
    np.testing.assert_array_equal(to_binary_mask(arr, path=tmp_path / "m.png"), mask > 0)
    Image.new("RGB", (64, 64)).save(tmp_path / "i.png")
    got = _loaded_label([str(tmp_path / "i.png")], [str(tmp_path / "m.png")])
    np.testing.assert_array_equal(got[0], (mask > 0).astype(np.float32))


@pytest.mark.parametrize("suffix", [".ome.tif", ".nii.gz"])
def test_stack_label_images_keep_every_instance(tmp_path, suffix):
    masks = np.stack([_instances(np.uint16, [1, 2, 700]), _instances(np.uint16, [3, 60000])])
    image = save_stack(
        tmp_path / f"image{suffix}", np.zeros((2, 64, 64), np.uint8), z_positions_um=[0.0, 4.0]
    )
    label = save_stack(tmp_path / f"label{suffix}", masks, z_positions_um=[0.0, 4.0])
    got = _loaded_label(str(image), str(label))
    np.testing.assert_array_equal(got, (masks > 0).astype(np.float32))


def test_jpeg_masks_keep_the_threshold_against_ringing(tmp_path):
    mask = _instances(np.uint8, [255, 255, 255, 255])
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=60)
    arr, _ = read_slice(tmp_path / "m.jpg")
    ringing = (arr > 0) & (arr < 128)
    assert ringing.any()  # compression noise around the squares, which a "> 0" rule would keep
    got = to_binary_mask(arr, path=tmp_path / "m.jpg")
    np.testing.assert_array_equal(got, arr > 127)
    assert (got != (mask > 0)).mean() < 0.01
    # the same values from a lossless file are labels: the noise would count there
    assert to_binary_mask(arr, path=tmp_path / "m.png").sum() == (arr > 0).sum()


def test_cmyk_jpeg_is_read_as_rgb(tmp_path):
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :16] = (200, 40, 40)
    rgb[:, 16:32] = (40, 180, 60)
    rgb[:, 32:] = (250, 250, 250)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
    arr, size = read_slice(tmp_path / "c.jpg")
    assert size == (32, 48) and arr.shape == (32, 48, 3)
    expected = np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB"), dtype=float)
    assert np.abs(arr.astype(float) - expected).mean() < 4.0  # JPEG noise only
    assert np.abs(arr[:, :16].astype(float).mean(axis=(0, 1)) - (200, 40, 40)).max() < 15


@pytest.mark.parametrize("suffix", [".ome.tif", ".nii.gz"])
def test_repeated_slice_indices_are_refused(tmp_path, suffix):
    from pathseqsam.data.errors import SequenceDataError
    from pathseqsam.data.stacks import read_stack_slices

    path = save_stack(tmp_path / f"s{suffix}", np.zeros((3, 8, 8), np.uint8), z_positions_um=[0.0, 4.0, 8.0])
    assert read_stack_slices(path, [2, 0]).shape == (2, 8, 8)
    with pytest.raises(SequenceDataError, match=r"slice index 1 requested more than once; expected distinct"):
        read_stack_slices(path, [1, 2, 1, 1])
    with pytest.raises(SequenceDataError, match="requested more than once"):
        LoadSequenced(["image"])({"image": str(path), "slice_index": [0] * 1000})
