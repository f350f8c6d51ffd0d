"""Stacks: OME/ImageJ TIFF, NIfTI and slice folders with a CSV, with their z positions."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseqsam.data.datalist import slice_folder_item
from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.stacks import (
    NIFTI_POSITIONS_ECODE,
    probe_stack,
    read_stack_slices,
    save_nifti_stack,
    save_stack,
    save_tiff_stack,
    stack_item,
)

Z = [0.0, 4.0, 10.0, 14.0]


@pytest.fixture
def volume():
    return np.random.default_rng(0).integers(0, 256, (4, 24, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["v.ome.tif", "v.nii.gz", "v.nii"])
def test_writers_round_trip_variable_spacing(tmp_path, volume, name):
    path = tmp_path / name
    (save_tiff_stack if "tif" in name else save_nifti_stack)(path, volume, Z, 2.0)
    info = probe_stack(path)
    assert (info.n_slices, info.height, info.width, info.channels) == (4, 24, 32, 3)
    assert info.z_positions_um == tuple(Z)
    assert info.xy_spacing_um == (2.0, 2.0)
    assert info.spacing_source in ("ome-plane", "nifti-extension")
    assert np.array_equal(read_stack_slices(path), volume)
    assert np.array_equal(read_stack_slices(path, [3, 0]), volume[[3, 0]])
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_imagej_spacing_and_units(tmp_path, volume):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        volume,
        imagej=True,
        photometric="rgb",
        metadata={"axes": "ZYXS", "spacing": 0.0035, "unit": "mm"},
    )
    info = probe_stack(path)
    assert info.spacing_source == "imagej"
    np.testing.assert_allclose(info.z_positions_um, [0.0, 3.5, 7.0, 10.5])
    planar = tmp_path / "zcyx.tif"  # ImageJ hyperstack with channels as separate planes
    tifffile.imwrite(
        planar, np.moveaxis(volume, 3, 1), imagej=True, metadata={"axes": "ZCYX", "spacing": 2.0}
    )
    assert probe_stack(planar).z_positions_um == (0.0, 2.0, 4.0, 6.0)
    assert np.array_equal(read_stack_slices(planar, [2]), volume[[2]])


def test_tiff_without_spacing(tmp_path, volume):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, volume, photometric="rgb", resolution=(2.0, 2.0), resolutionunit="MICROMETER")
    with pytest.raises(SequenceDataError, match=r"plain\.tif: stack has no z-spacing .* pass z_spacing_um="):
        probe_stack(path)
    assert probe_stack(path, z_spacing_um=5.0).z_positions_um == (0.0, 5.0, 10.0, 15.0)
    # Resolution tags give the in-plane pixel size (0.5 um); z only when asked to assume isotropy.
    info = probe_stack(path, assume_isotropic=True)
    assert info.xy_spacing_um == (0.5, 0.5) and info.z_positions_um == (0.0, 0.5, 1.0, 1.5)
    with pytest.raises(SequenceDataError, match=r"plain\.tif: stack has no z-spacing"):
        stack_item(path)


@pytest.mark.parametrize("dpi", [72.0, 96.0])
def test_tiff_writer_default_dpi_is_no_pixel_size(tmp_path, volume, dpi):
    """72/96 pixels per inch is what writers put in by default (352.8 / 264.6 um/px taken at face
    value); it counts as missing, as in the 2D and whole-slide readers, and never becomes a z-spacing."""
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, volume, photometric="rgb", resolution=(dpi, dpi), resolutionunit="INCH")
    with pytest.raises(SequenceDataError, match=r"dpi\.tif: stack has no z-spacing"):
        probe_stack(path, assume_isotropic=True)
    assert probe_stack(path, z_spacing_um=3.0).xy_spacing_um is None
    measured = tmp_path / "measured.tif"  # 50,800 px per inch = 0.5 um/px: a real measurement
    tifffile.imwrite(
        measured, volume, photometric="rgb", resolution=(50800.0, 25400.0), resolutionunit="INCH"
    )
    np.testing.assert_allclose(probe_stack(measured, z_spacing_um=3.0).xy_spacing_um, (1.0, 0.5))


def test_nifti_header_units_and_unknown_units(tmp_path):
    data = np.zeros((32, 24, 3), np.uint16)  # [x, y, z]
    data[5, 7, 1] = 1000
    img = nib.Nifti1Image(data, np.diag([0.002, 0.002, 0.005, 1.0]))
    img.header.set_xyzt_units("mm")
    mm = tmp_path / "mm.nii.gz"
    nib.save(img, mm)
    info = probe_stack(mm)
    assert info.spacing_source == "nifti-header" and (info.height, info.width, info.channels) == (24, 32, 1)
    np.testing.assert_allclose(info.z_positions_um, [0.0, 5.0, 10.0])
    np.testing.assert_allclose(info.xy_spacing_um, (2.0, 2.0))
    slices = read_stack_slices(mm)
    assert slices.shape == (3, 24, 32) and slices[1, 7, 5] == 1000  # slice k = data[:, :, k].T
    unknown = tmp_path / "unknown.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), unknown)
    with pytest.raises(
        SequenceDataError, match=r"unknown\.nii: stack has no z-spacing .*xyzt_units is 'unknown'"
    ):
        probe_stack(unknown)
    assert probe_stack(unknown, z_spacing_um=3.0).z_positions_um == (0.0, 3.0, 6.0)


def test_nifti_extension_with_bad_positions(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), np.eye(4))
    img.header.set_xyzt_units("micron")
    payload = json.dumps({"pathseqsam": {"slice_positions_um": [0.0, 2.0, 2.0]}}).encode()
    img.header.extensions.append(nib.nifti1.Nifti1Extension(NIFTI_POSITIONS_ECODE, payload))
    path = tmp_path / "dup.nii"
    nib.save(img, path)
    with pytest.raises(
        SequenceDataError, match=r"dup\.nii \(PathSeqSAM header extension\): duplicate position \[2\.0\]"
    ):
        probe_stack(path)


def test_stack_item_and_mask_shape_check(tmp_path, volume):
    image, mask = tmp_path / "a_image.ome.tif", tmp_path / "a_mask.ome.tif"
    save_tiff_stack(image, volume, Z)
    save_tiff_stack(mask, (volume[..., 0] > 128).astype(np.uint8) * 255, Z)
    item = stack_item(image, mask, case="a")
    assert item["positions_um"] == [[z] for z in Z] and item["label"] == str(mask) and item["case"] == "a"
    wrong = tmp_path / "b_mask.ome.tif"
    save_tiff_stack(wrong, np.zeros((3, 24, 32), np.uint8), Z[:3])
    with pytest.raises(
        SequenceDataError,
        match=r"b_mask\.ome\.tif: mask stack is 3 x 24 x 32 .* a_image\.ome\.tif is 4 x 24 x 32",
    ):
        stack_item(image, wrong)


def test_bad_stack_files(tmp_path):
    with pytest.raises(SequenceDataError, match="stack file not found"):
        probe_stack(tmp_path / "none.tif")
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00garbage")
    with pytest.raises(SequenceDataError, match=r"corrupt\.tif: cannot read TIFF stack"):
        probe_stack(corrupt)
    (tmp_path / "v.mha").write_bytes(b"x")
    with pytest.raises(SequenceDataError, match="unsupported stack format"):
        probe_stack(tmp_path / "v.mha")
    path = tmp_path / "v.ome.tif"
    save_tiff_stack(path, np.zeros((2, 8, 8), np.uint8), [0.0, 1.0])
    with pytest.raises(SequenceDataError, match="slice index 5 out of range; the stack has 2 slices"):
        read_stack_slices(path, [5])


def _slice_folder(tmp_path, rows, header="image,label,z_um"):
    for i in range(3):
        Image.fromarray(np.full((16, 20, 3), 40 * i, np.uint8)).save(tmp_path / f"s{i}.png")
        Image.fromarray(np.zeros((16, 20), np.uint8)).save(tmp_path / f"s{i}_mask.png")
    csv = tmp_path / "positions.csv"
    csv.write_text(header + "\n" + "\n".join(rows) + "\n")
    return csv


def test_slice_folder_with_csv(tmp_path):
    csv = _slice_folder(tmp_path, ["s2.png,s2_mask.png,9.5", "s0.png,s0_mask.png,0", "s1.png,s1_mask.png,4"])
    item = slice_folder_item(csv, case="folder")
    assert [p.split("/")[-1] for p in item["image"]] == ["s2.png", "s0.png", "s1.png"]  # CSV row order
    assert item["label"][0].endswith("s2_mask.png") and item["positions_um"] == [[9.5], [0.0], [4.0]]
    xy = _slice_folder(tmp_path, ["s0.png,1,2", "s1.png,3,4"], header="file,x_um,y_um")
    unlabelled = slice_folder_item(xy)
    assert unlabelled["positions_um"] == [[1.0, 2.0], [3.0, 4.0]] and "label" not in unlabelled


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (
            ["s0.png,s0_mask.png,0", "gone.png,s1_mask.png,4"],
            "image,label,z_um",
            r"line 3: image file .*gone\.png not found",
        ),
        (
            ["s0.png,s0_mask.png,zero"],
            "image,label,z_um",
            r"line 2: position columns \['z_um'\] must be numbers",
        ),
        (
            ["s0.png,s0_mask.png,1", "s1.png,s1_mask.png,1"],
            "image,label,z_um",
            r"positions\.csv: duplicate position \[1\.0\]",
        ),
        (
            ["s0.png,s0_mask.png,nan"],
            "image,label,z_um",
            r"non-finite position \[nan\] at slice 0 \(s0\.png\)",
        ),
        (
            ["s0.png,0"],
            "image,depth",
            r"columns \['image', 'depth'\]; expected an 'image' column and at least one of",
        ),
        ([], "image,z_um", "no slices; expected a header row and one row per slice"),
    ],
)
def test_slice_folder_bad_csv(tmp_path, rows, header, message):
    csv = _slice_folder(tmp_path, rows, header)
    with pytest.raises(SequenceDataError, match=message):
        slice_folder_item(csv)


def test_slice_folder_size_mismatch_and_required_masks(tmp_path):
    csv = _slice_folder(tmp_path, ["s0.png,s0_mask.png,0", "s1.png,,4"])
    with pytest.raises(SequenceDataError, match=r"line 3: no mask for s1\.png"):
        slice_folder_item(csv, masks="required")
    with pytest.warns(UserWarning, match="kept without labels"):
        assert "label" not in slice_folder_item(csv)
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(tmp_path / "s1_mask.png")
    csv = _slice_folder(tmp_path, ["s0.png,s0_mask.png,0"])
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(tmp_path / "s0_mask.png")
    with pytest.raises(
        SequenceDataError, match=r"s0_mask\.png: mask is 20x10 px but image s0\.png is 20x16 px"
    ):
        slice_folder_item(csv)


def test_save_stack_is_the_one_writer_for_both_formats(tmp_path):
    masks = np.zeros((3, 10, 12), np.uint8)
    masks[1, 2:5, 3:9] = 255
    tif = save_stack(tmp_path / "m.ome.tif", masks)  # no positions: a mask stack
    np.testing.assert_array_equal(read_stack_slices(tif), masks)
    image = save_stack(tmp_path / "img.nii.gz", masks, [0.0, 4.0, 9.0], xy_spacing_um=0.5)
    assert probe_stack(image).z_positions_um == (0.0, 4.0, 9.0)
    copied = save_stack(tmp_path / "mask.nii.gz", masks, affine_like=image)
    np.testing.assert_allclose(nib.load(str(copied)).affine, nib.load(str(image)).affine)
    np.testing.assert_array_equal(read_stack_slices(copied), masks)
    assert nib.load(str(copied)).header.get_xyzt_units()[0] == "micron"
