"""Image files as sequences for MONAI Label, masks written back in the image's format (read back)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.stacks import save_nifti_stack, save_tiff_stack
from pathseqsam.data.transforms import LoadSequenced
from pathseqsam.label.sequence_io import (
    SequenceItemd,
    mask_suffix,
    sequence_item,
    sequence_length,
    write_mask,
)


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(3, 24, 32, 3), dtype=np.uint8)  # [N, H, W, RGB]


def test_stack_item_keeps_the_file_spacing_and_loads(tmp_path, volume):
    path = save_nifti_stack(tmp_path / "case7.nii.gz", volume, [0.0, 3.0, 7.5])
    item = sequence_item(path, z_spacing_um=99.0)
    assert item == {"case": "case7", "image": str(path), "positions_um": [[0.0], [3.0], [7.5]]}
    assert sequence_length(item) == 3
    loaded = LoadSequenced(["image", "label"])(item)
    assert loaded["image"].shape == (3, 3, 24, 32)
    np.testing.assert_allclose(loaded["image"][:, 1].permute(1, 2, 0).numpy(), volume[1] / 255.0, atol=1e-6)
    assert loaded["positions"].flatten().tolist() == [0.0, 3.0, 7.5]


def test_stack_without_spacing_uses_the_setting(tmp_path, volume):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, volume, photometric="rgb")  # no OME/ImageJ spacing
    item = sequence_item(path, z_spacing_um=5.0)
    assert item["positions_um"] == [[0.0], [5.0], [10.0]]


def test_2d_patch_is_a_sequence_of_one(tmp_path, volume):
    image = tmp_path / "patch.png"
    label = tmp_path / "patch_label.png"
    Image.fromarray(volume[0]).save(image)
    Image.fromarray((volume[0, :, :, 0] > 128).astype(np.uint8)).save(label)
    item = sequence_item(image, label)
    assert item == {"case": "patch", "image": [str(image)], "label": [str(label)]}
    assert sequence_length(item) == 1
    loaded = LoadSequenced(["image", "label"])(item)
    assert loaded["image"].shape == (3, 1, 24, 32)
    np.testing.assert_array_equal(loaded["label"][0, 0].numpy(), volume[0, :, :, 0] > 128)


def test_bad_files_are_named(tmp_path, volume):
    with pytest.raises(SequenceDataError, match=r"missing\.nii\.gz: image file not found"):
        sequence_item(tmp_path / "missing.nii.gz")
    image = tmp_path / "patch.png"
    Image.fromarray(volume[0]).save(image)
    with pytest.raises(
        SequenceDataError, match=r"mask.nii.gz: label must be the same kind of file as image patch.png"
    ):
        sequence_item(image, tmp_path / "mask.nii.gz")


def test_masks_are_written_like_the_image(tmp_path, volume):
    mask = np.zeros((3, 24, 32), dtype=np.uint8)
    mask[1, 5:9, 10:20] = 1
    nifti = save_nifti_stack(tmp_path / "img.nii.gz", volume, [0.0, 2.0, 4.0], xy_spacing_um=0.5)
    assert mask_suffix(nifti, 3) == ".nii.gz"
    out = write_mask(mask, tmp_path / "m.nii.gz", source=nifti)
    back = nib.load(out)
    np.testing.assert_array_equal(np.asarray(back.dataobj).transpose(2, 1, 0), mask)  # NIfTI is x, y, z
    np.testing.assert_allclose(back.affine, nib.load(nifti).affine)

    tiff = save_tiff_stack(tmp_path / "img.ome.tif", volume, [0.0, 2.0, 4.0])
    assert mask_suffix(tiff, 3) == ".ome.tif"
    np.testing.assert_array_equal(
        tifffile.imread(write_mask(mask, tmp_path / "m.ome.tif", source=tiff)), mask
    )

    assert mask_suffix(tmp_path / "patch.png", 1) == ".png"
    assert mask_suffix(nifti, 1, region=True) == ".png"
    assert mask_suffix(nifti, 3, region=True) == ".ome.tif"
    png = write_mask(mask[1:2], tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(Image.open(png)), mask[1])
    with pytest.raises(ValueError, match="a PNG holds one slice, got 3"):
        write_mask(mask, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="a 2D image gives one slice, got a mask of 3"):
        mask_suffix(tmp_path / "patch.jpg", 3)


def test_request_transform_builds_the_item_and_drops_uploaded_labels(tmp_path, volume):
    path = save_nifti_stack(tmp_path / "seq.nii.gz", volume, [0.0, 4.0, 9.0])
    out = SequenceItemd("image", z_spacing_um=1.0)({"image": str(path), "label": "upload.nii.gz", "slice": 1})
    assert out == {"image": str(path), "positions_um": [[0.0], [4.0], [9.0]], "case": "seq", "slice": 1}
