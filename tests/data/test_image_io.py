"""Slice decoding and conversion: gray/RGBA/16-bit/float inputs, mask binarisation, bad files."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.image_io import read_image_size, read_slice, to_binary_mask, to_rgb_float


def test_gray_is_replicated_and_scaled():
    gray = np.array([[0, 51], [204, 255]], np.uint8)
    out = to_rgb_float(gray)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], gray / 255.0, atol=1e-7)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_rgba_is_composited_over_white():
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 1] = (0, 0, 0, 51)  # 20 % black over white -> 0.8
    out = to_rgb_float(rgba)
    np.testing.assert_allclose(out[0, 0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0.8, 0.8, 0.8], atol=1e-6)


def test_16bit_png_keeps_its_range(tmp_path):
    rgb16 = np.zeros((4, 4, 3), np.uint16)
    rgb16[..., 0] = 65535
    rgb16[..., 1] = 32768
    path = tmp_path / "s.png"
    path.write_bytes(imagecodecs.png_encode(rgb16))
    arr, size = read_slice(path)
    assert arr.dtype == np.uint16 and size == (4, 4)
    np.testing.assert_allclose(to_rgb_float(arr)[0, 0], [1.0, 32768 / 65535, 0.0], atol=1e-6)


def test_float_images_in_0_1_and_0_255():
    np.testing.assert_allclose(to_rgb_float(np.full((2, 2), 0.5, np.float32))[0, 0], [0.5] * 3)
    np.testing.assert_allclose(to_rgb_float(np.full((2, 2, 3), 127.5, np.float32))[0, 0], [0.5] * 3)


def test_too_many_channels_and_nan_are_refused():
    with pytest.raises(SequenceDataError, match=r"x\.tif: expected 1 \(gray\).*got 5"):
        to_rgb_float(np.zeros((2, 2, 5), np.uint8), "x.tif")
    with pytest.raises(SequenceDataError, match=r"y\.tif: image contains NaN"):
        to_rgb_float(np.full((2, 2), np.nan, np.float32), "y.tif")


def test_jpeg_mask_threshold_beats_nonzero(tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    mask = (((yy - 30.3) ** 2 + (xx - 27.6) ** 2) < 13.5**2).astype(np.uint8) * 255  # not block-aligned
    path = tmp_path / "m_mask.jpg"
    Image.fromarray(mask).save(path, quality=75)
    decoded, _ = read_slice(path)
    binary = to_binary_mask(decoded)
    assert np.array_equal(binary, mask > 0)  # the threshold recovers the exact mask
    assert (decoded > 0).sum() > (mask > 0).sum()  # while "> 0" picks up JPEG ringing


def test_label_images_and_colour_masks():
    labels = np.array([[0, 1], [1, 0]], np.uint8)  # {0, 1} label image
    assert np.array_equal(to_binary_mask(labels), labels > 0)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (0, 200, 0)  # a green annotation counts
    assert to_binary_mask(rgb).tolist() == [[True, False], [False, False]]
    m16 = np.array([[0, 40000]], np.uint16)
    assert to_binary_mask(m16).tolist() == [[False, True]]
    with pytest.raises(SequenceDataError, match=r"threshold must be in \(0, 1\)"):
        to_binary_mask(labels, threshold=1.5)


def test_jpeg_draft_decodes_smaller_but_reports_full_size(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.full((512, 512, 3), 128, np.uint8)).save(path)
    arr, size = read_slice(path, min_size=(64, 64))
    assert size == (512, 512)
    assert 64 <= arr.shape[0] < 512  # decoded at a reduced scale, never below the request


def test_tiff_slice_and_header_size(tmp_path):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.zeros((3, 20, 30), np.uint8), photometric="rgb", planarconfig="separate")
    arr, size = read_slice(path)
    assert arr.shape == (20, 30, 3) and size == (20, 30)
    assert read_image_size(path) == (20, 30)


def test_missing_corrupt_and_truncated_files(tmp_path):
    with pytest.raises(SequenceDataError, match=r"nope\.jpg: file not found"):
        read_slice(tmp_path / "nope.jpg")
    bad = tmp_path / "bad_img.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(SequenceDataError, match=r"bad_img\.jpg: cannot read image"):
        read_image_size(bad)
    good = tmp_path / "cut_img.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    assert read_image_size(good) == (64, 64)
    with pytest.raises(SequenceDataError, match=r"cut_img\.jpg: cannot read image.*truncated"):
        read_slice(good)
