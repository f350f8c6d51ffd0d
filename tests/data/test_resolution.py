"""Pixel size from files and datalists (OME, Aperio, TIFF tags, NIfTI), and the error without one."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseqsam.data.errors import SequenceDataError
from pathseqsam.data.resolution import read_pixel_size_um, resolve_mpp_um
from pathseqsam.data.stacks import save_nifti_stack, save_tiff_stack

RGB = np.zeros((2, 16, 16, 3), np.uint8)


def test_ome_physical_size_x(tmp_path):
    path = save_tiff_stack(tmp_path / "a.ome.tif", RGB, [0.0, 4.0], xy_spacing_um=0.4)
    assert read_pixel_size_um(path) == (pytest.approx(0.4), "OME PhysicalSizeX")


def test_aperio_description(tmp_path):
    path = tmp_path / "slide.tif"
    description = "Aperio Image Library v12.0.15\r\n46000x32914 (256x256) JPEG/RGB Q=70|AppMag = 40|MPP = 0.2527|Left = 1"
    tifffile.imwrite(path, RGB[0], description=description, photometric="rgb")
    assert read_pixel_size_um(path) == (pytest.approx(0.2527), "Aperio MPP")


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [
        ((4000.0, 4000.0), "CENTIMETER", 2.5),  # 4000 px per cm
        ((101600.0, 101600.0), "INCH", 0.25),  # 40x scanner in dpi
        ((72.0, 72.0), "INCH", None),  # a writer's default: not a pixel size
        ((96.0, 96.0), "INCH", None),
        ((96.0 / 2.54, 96.0 / 2.54), "CENTIMETER", None),  # 96 dpi expressed per cm
        ((1.0, 1.0), "NONE", None),  # unitless
    ],
)
def test_tiff_resolution_tags(tmp_path, resolution, unit, expected):
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, RGB[0], photometric="rgb", resolution=resolution, resolutionunit=unit)
    mpp, source = read_pixel_size_um(path)
    assert source == "TIFF resolution tags"
    assert mpp == (None if expected is None else pytest.approx(expected))


def test_nifti_pixdim_needs_units(tmp_path):
    path = save_nifti_stack(tmp_path / "v.nii.gz", RGB[..., 0], [0.0, 3.0], xy_spacing_um=0.5)
    assert read_pixel_size_um(path)[0] == pytest.approx(0.5)
    unknown = tmp_path / "u.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.diag([0.5, 0.5, 3.0, 1.0])), unknown)
    assert read_pixel_size_um(unknown)[0] is None  # nibabel's default units say nothing


def test_png_carries_none_and_the_error_says_how_to_give_it(tmp_path):
    path = tmp_path / "patch.png"
    Image.fromarray(RGB[0]).save(path, dpi=(300, 300))
    assert read_pixel_size_um(path)[0] is None
    with pytest.raises(
        SequenceDataError, match=r"patch\.png.*'mpp_um' field.*--mpp_um <um per px>.*--conf mpp_um"
    ):
        resolve_mpp_um(None, path, None, "case 'x'")
    # the datalist field wins over the file, the fallback only serves files without metadata
    assert resolve_mpp_um(0.5, path, 2.0, "x") == (0.5, "datalist")
    assert resolve_mpp_um(None, path, 2.0, "x") == (2.0, "setting")
    ome = save_tiff_stack(tmp_path / "b.ome.tif", RGB, [0.0, 4.0], xy_spacing_um=0.4)
    assert resolve_mpp_um(None, ome, 2.0, "x")[0] == pytest.approx(0.4)
    with pytest.raises(SequenceDataError, match=r"mpp_um must be a positive number.*got -1"):
        resolve_mpp_um(-1, path, None, "case 'x'")
