"""Regions of pyramidal slides for MONAI Label requests: what is read, what is refused, the outlines."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pathseqsam.label.requests.options import RequestRefused, RequestTooLarge
from pathseqsam.label.requests.region import Region
from pathseqsam.label.slides.region import SlideRegiond, is_pyramidal_slide, mask_contours, slide_region
from pathseqsam.wsi.reader import WSIReaderSlide, open_slide

pytestmark = pytest.mark.label


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """1024 x 768 px at 0.5 um/px, levels 1x and 2x (top-level pages; OpenSlide opens it)."""
    from pathseqsam.synthetic.slides import make_slide_scene, write_synthetic_slide

    path = tmp_path_factory.mktemp("slide") / "s.tiff"
    write_synthetic_slide(path, make_slide_scene(1024, 768, mpp_um=0.5, n_glomeruli=6, seed=1))
    return path


def test_only_pyramidal_slides_are_slides(slide, tmp_path):
    import tifffile
    from PIL import Image

    assert is_pyramidal_slide(slide)
    tifffile.imwrite(tmp_path / "stack.ome.tif", np.zeros((3, 32, 32), np.uint8))
    Image.new("RGB", (32, 32)).save(tmp_path / "patch.png")
    assert not is_pyramidal_slide(tmp_path / "stack.ome.tif")
    assert not is_pyramidal_slide(tmp_path / "patch.png")
    assert not is_pyramidal_slide(tmp_path / "missing.tif")


def test_only_the_region_of_the_requested_level_is_read(slide, monkeypatch):
    import tifffile

    calls = []
    original = WSIReaderSlide.read_level_region

    def spy(self, level, x, y, width, height):
        calls.append((level, x, y, width, height))
        return original(self, level, x, y, width, height)

    monkeypatch.setattr(WSIReaderSlide, "read_level_region", spy)
    request = {"image": str(slide), "location": [200, 100], "size": [150, 120], "level": 1}
    out = SlideRegiond(model_mpp_um=2.0, max_pixels=10**6)(request)
    assert calls == [(1, 100, 50, 150, 120)]  # level-0 (200, 100) is level-1 (100, 50)
    (rgb,) = out["image"]
    level1 = tifffile.imread(slide, key=1)  # the same pixels decoded by tifffile
    assert rgb.shape == (120, 150, 3)
    assert np.abs(rgb.astype(int) - level1[50:170, 100:250].astype(int)).max() <= 2
    assert out["mpp_um"] == 1.0 and out["case"] == "s"
    assert out["region"] == Region(200, 100, 300, 240)  # level-0 pixels, for clicks
    assert out["slide_region"].level == 1 and out["slide_region"].downsample == 2.0


@pytest.mark.parametrize(
    "request_, error, message",
    [
        ({"level": 2, "size": [8, 8]}, RequestRefused, r"'level' = 2: the slide s.tiff has levels 0..1"),
        (
            {"location": [1000, 0], "size": [100, 10]},
            RequestRefused,
            r"does not lie inside the slide s.tiff: level 0 is 1024x768 px",
        ),
        ({"location": [0, 700], "size": [10, 40], "level": 1}, RequestRefused, r"level 1 is 512x384 px"),
        ({"location": [2000, 0], "size": [1, 1]}, RequestRefused, r"does not lie inside"),
        ({"size": [600, 600]}, RequestTooLarge, r"'size' \[600, 600\] at level 0: 0.4 megapixels"),
        # a coarse level upsampled to a fine model is as much work: counted at the working resolution
        (
            {"size": [300, 300], "level": 1},
            RequestTooLarge,
            r"0.1 megapixels \(0.4 at the model's 0.5 um/px\)",
        ),
        ({}, RequestTooLarge, r"'size' \[1024, 768\] at level 0"),  # no size: the whole level
    ],
)
def test_wrong_regions_are_refused_before_reading(slide, request_, error, message):
    with open_slide(slide) as s:
        with pytest.raises(error, match=message):
            slide_region(request_, s, model_mpp_um=0.5, max_pixels=300_000)


def test_outlines_are_in_level_0_pixels(slide):
    if os.environ.get("PATHSEQSAM_LABEL_TESTS") != "required":  # scikit-image comes with MONAI Label
        pytest.importorskip("skimage", reason="scikit-image not installed (the label extra brings it)")
    with open_slide(slide) as s:
        region = slide_region({"location": [100, 60], "size": [64, 48], "level": 1}, s, 2.0, None)
    mask = np.zeros((48, 64), bool)
    mask[10:20, 5:25] = True  # level-1 pixels: rows 10..19, columns 5..24
    (poly,) = mask_contours(mask, region)
    xs, ys = np.asarray(poly).T
    # level-0 pixels: x from 100 + 2 * 5 to 100 + 2 * 25, y from 60 + 2 * 10 to 60 + 2 * 20 (pixel centres)
    assert xs.min() == pytest.approx(100 + 2 * 5, abs=1.0) and xs.max() == pytest.approx(
        100 + 2 * 25, abs=1.0
    )
    assert ys.min() == pytest.approx(60 + 2 * 10, abs=1.0) and ys.max() == pytest.approx(60 + 2 * 20, abs=1.0)
    assert mask_contours(np.zeros((48, 64), bool), region) == []
